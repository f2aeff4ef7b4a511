package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// microvmArgs are the flags that run an operation in a microvm guest under
// TCG, or nil (and a skip) when QEMU or the guest is missing; make test
// installs QEMU and runs make guest.
func microvmArgs(t *testing.T) []string {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (make test installs qemu-system-x86)")
	}
	dir, err := filepath.Abs(filepath.Join("..", "build", "guest"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "initramfs.cpio")); err != nil {
		t.Skip("the microvm guest is not built (make guest)")
	}
	t.Setenv("INSTARFS_GUEST_DIR", dir)
	return []string{"--sandbox=microvm", "--accel=tcg"}
}

// mvFixture is a small qcow2 chain: base, an overlay over it, and a new base.
const mvFixture = `set -euo pipefail
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 128k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x33 64k 64k' -c 'write -z 1M 64k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 new.qcow2 4M
qemu-io -c 'write -P 0x11 0 64k' new.qcow2 >/dev/null
`

// inDir runs the binary under test in dir with dir allowed.
func inDir(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"--allow-dir", dir}, args...)...)
	cmd.Dir = dir
	return runCmd(t, cmd)
}

// TestMicrovmSameAnswers runs info, map and check, a rebase and a commit
// through the microvm guest and the jail, and wants the same output and the
// same image bytes, and as many guests as the design says
// (ARCHITECTURE.md, "at most two boots per operation"): one for an
// operation that reads metadata, the members below the top read through the
// broker's port; two for one that reads their data. A backing name the
// policy refuses is refused as under the jail.
func TestMicrovmSameAnswers(t *testing.T) {
	vm := append(microvmArgs(t), "--log-level=debug")
	jail, guest := t.TempDir(), t.TempDir()
	for _, d := range []string{jail, guest} {
		shellIn(t, d, mvFixture)
		// Written by qemu-img -u, and never opened by qemu.
		shellIn(t, d, "qemu-img create -q -f qcow2 -u -b /etc/passwd -F raw evil.qcow2 4M")
	}
	boots := map[string]int{"info": 1, "map": 1, "check": 1, "rebase": 2, "commit": 2, "refused name": 1}
	same := func(what string, a, b result) {
		t.Helper()
		if a.code != b.code || !bytes.Equal(a.stdout, b.stdout) {
			t.Errorf("%s: jail exit %d\n%s%s\nmicrovm exit %d\n%s%s", what, a.code, a.stdout, a.stderr, b.code, b.stdout, b.stderr)
		}
		if n := bytes.Count(b.stderr, []byte("microvm guest ready")); boots[what] != 0 && n != boots[what] {
			t.Errorf("%s: %d guests booted, want %d", what, n, boots[what])
		}
	}
	sameFiles := func(what string, names ...string) {
		t.Helper()
		for _, n := range names {
			a, errA := os.ReadFile(filepath.Join(jail, n))
			b, errB := os.ReadFile(filepath.Join(guest, n))
			if errA != nil || errB != nil || !bytes.Equal(a, b) {
				t.Errorf("%s: %s differs (%d and %d bytes; %v, %v)", what, n, len(a), len(b), errA, errB)
			}
		}
	}
	for _, op := range [][]string{
		{"info", "--output=json", "--backing-chain", "top.qcow2"},
		{"map", "--output=json", "top.qcow2"},
		{"check", "--output=json", "top.qcow2"},
	} {
		same(op[0], inDir(t, jail, op...), inDir(t, guest, append(vm, op...)...))
	}
	evil := []string{"map", "--output=json", "evil.qcow2"}
	a, b := inDir(t, jail, evil...), inDir(t, guest, append(vm, evil...)...)
	same("refused name", a, b)
	for _, r := range []result{a, b} {
		if r.code == 0 || !bytes.Contains(r.stderr, []byte("BACKING_PATH_OUTSIDE_ROOT")) {
			t.Errorf("a backing name outside the roots: exit %d, %s; want BACKING_PATH_OUTSIDE_ROOT", r.code, r.stderr)
		}
	}

	rebase := []string{"rebase", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"}
	same("rebase", inDir(t, jail, rebase...), inDir(t, guest, append(vm, rebase...)...))
	sameFiles("rebase", "top.qcow2", "base.qcow2", "new.qcow2")

	commit := []string{"commit", "top.qcow2"}
	same("commit", inDir(t, jail, commit...), inDir(t, guest, append(vm, commit...)...))
	sameFiles("commit", "top.qcow2", "new.qcow2")
	checkClean(t, filepath.Join(guest, "new.qcow2"), false)
}

// TestMicrovmMount mounts a small chain with --sandbox=microvm under TCG and
// reads what a user reads first: an image's info.json (as the jail's command
// line prints it) and its disk file, through a guest's session (as qemu-img
// convert flattens the chain).
func TestMicrovmMount(t *testing.T) {
	vm := microvmArgs(t)
	dir := t.TempDir()
	shellIn(t, dir, mvFixture)
	m := mount(t, dir, vm, "--read-only")
	want := inDir(t, dir, "info", "--output=json", "top.qcow2")
	if got := m.read(t, "top.qcow2", "info.json"); want.code != 0 || got != string(want.stdout) {
		t.Errorf("info.json through the microvm:\n%s\nthe jail's command line (exit %d):\n%s%s\nmount log:\n%s", got, want.code, want.stdout, want.stderr, m.stderr)
	}
	got, err := os.ReadFile(m.path("top.qcow2", "disk"))
	if err != nil {
		t.Fatalf("reading disk: %v\nmount log:\n%s", err, m.stderr)
	}
	if !bytes.Equal(got, qemuContent(t, dir, "top.qcow2")) {
		t.Errorf("disk through the microvm differs from qemu-img convert (%d bytes)", len(got))
	}
}
