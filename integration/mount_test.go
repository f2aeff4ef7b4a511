package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"instarfs/internal/fusetest"
	"instarfs/internal/qemutest"
)

// mounted is a running `instarfs mount`.
type mounted struct {
	dir, mnt string
	cmd      *exec.Cmd
	stderr   *logBuffer
	killed   bool // the test killed it on purpose
}

// mount runs `instarfs [global] mount [opts] dir MNT` in the background and
// waits until the mount is up. Cleanup stops it with SIGTERM, expects exit 0,
// and detaches the mount if anything went wrong, so a failing test never
// leaves a mount behind.
func mount(t testing.TB, dir string, global []string, opts ...string) *mounted {
	t.Helper()
	fusetest.Need(t)
	m := &mounted{dir: dir, mnt: t.TempDir(), stderr: &logBuffer{}}
	args := append([]string{}, global...)
	if !slices.ContainsFunc(global, func(a string) bool { return strings.HasPrefix(a, "--log-level") }) {
		args = append(args, "--log-level=info")
	}
	args = append(args, "mount")
	args = append(append(args, opts...), dir, m.mnt)
	m.cmd = exec.Command(binary, args...)
	m.cmd.Stderr = m.stderr
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- m.cmd.Wait() }()
	t.Cleanup(func() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil && !m.killed {
				t.Errorf("instarfs mount exited with %v\n%s", err, m.stderr)
			}
		case <-time.After(30 * time.Second):
			m.cmd.Process.Kill()
			t.Errorf("instarfs mount did not exit after SIGTERM\n%s", m.stderr)
		}
		if isMounted(m.mnt) {
			syscall.Unmount(m.mnt, syscall.MNT_DETACH)
			exec.Command("fusermount3", "-u", "-z", m.mnt).Run()
			t.Errorf("the mount was still there after instarfs exited")
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !isMounted(m.mnt) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("instarfs mount exited early (%v):\n%s", err, m.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not mounted after 15 s:\n%s", m.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return m
}

func isMounted(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

func (m *mounted) path(p ...string) string { return filepath.Join(append([]string{m.mnt}, p...)...) }

func (m *mounted) read(t *testing.T, p ...string) string {
	t.Helper()
	b, err := os.ReadFile(m.path(p...))
	if err != nil {
		t.Fatalf("reading %s: %v", filepath.Join(p...), err)
	}
	return string(b)
}

// shell runs a bash command line in the mountpoint: the way a user drives the
// control files, and a process that holds no file of the mount open in this
// test's process.
func (m *mounted) shell(t *testing.T, script string) result {
	t.Helper()
	return execIn(t, m.mnt, "bash", "-c", script)
}

// demoCopy copies the demo chain to a fresh directory.
func demoCopy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"base.qcow2", "overlay.qcow2", "new-base.qcow2"} {
		b, err := os.ReadFile(filepath.Join("..", "testdata", "demo", n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	sort.Strings(out)
	return out
}

// TestMountTree checks the shape of the tree: images as directories (qcow2,
// raw named as a raw backing file, images in subdirectories), other files
// hidden, the backing symlink, stable inode numbers and refused changes.
func TestMountTree(t *testing.T) {
	dir := demoCopy(t)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not an image\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "zeros.bin"), make([]byte, 1<<20), 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "disk.raw"), make([]byte, 1<<20), 0o644)
	if r := qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", "sub/top.qcow2", "1M"); r.code != 0 {
		t.Fatalf("qemu-img create: %s", r.stderr)
	}
	m := mount(t, dir, nil)

	if got, want := names(t, m.mnt), []string{"base.qcow2", "new-base.qcow2", "overlay.qcow2", "sub"}; !reflect.DeepEqual(got, want) {
		t.Errorf("root lists %q, want %q", got, want)
	}
	if got, want := names(t, m.path("sub")), []string{"disk.raw", "top.qcow2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("sub lists %q, want %q", got, want)
	}
	want := []string{"backing", "chain.json", "check.json", "commit", "disk", "info.json", "map.json", "map.svg", "rebase", "repair", "result.json", "status"}
	if got := names(t, m.path("overlay.qcow2")); !reflect.DeepEqual(got, want) {
		t.Errorf("overlay.qcow2 lists %q, want %q", got, want)
	}
	if got := names(t, m.path("base.qcow2")); reflect.DeepEqual(got, want) || len(got) != len(want)-1 {
		t.Errorf("base.qcow2 (no backing file) lists %q", got)
	}
	if l, err := os.Readlink(m.path("overlay.qcow2", "backing")); err != nil || l != "../base.qcow2" {
		t.Errorf("overlay.qcow2/backing -> %q, %v", l, err)
	}
	if l, err := os.Readlink(m.path("sub", "top.qcow2", "backing")); err != nil || l != "../disk.raw" {
		t.Errorf("sub/top.qcow2/backing -> %q, %v", l, err)
	}
	if _, err := os.Stat(m.path("overlay.qcow2", "backing", "info.json")); err != nil {
		t.Errorf("following the backing link: %v", err)
	}
	if s := m.read(t, "sub", "disk.raw", "info.json"); !strings.Contains(s, `"format": "raw"`) {
		t.Errorf("sub/disk.raw/info.json: %s", s)
	}
	if s := m.read(t, "overlay.qcow2", "status"); s != "idle\n" {
		t.Errorf("status %q, want idle", s)
	}
	if s := m.read(t, "overlay.qcow2", "result.json"); s != "null\n" {
		t.Errorf("result.json before any job: %q", s)
	}
	for p, mode := range map[string]os.FileMode{"rebase": 0o600, "commit": 0o600, "repair": 0o600, "info.json": 0o444, "status": 0o444} {
		if st, err := os.Stat(m.path("overlay.qcow2", p)); err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, %v; want %v", p, st.Mode(), err, mode)
		}
	}

	// Inode numbers survive the kernel forgetting the entries.
	inode := func(p ...string) uint64 {
		st, err := os.Stat(m.path(p...))
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	before := []uint64{inode("overlay.qcow2"), inode("overlay.qcow2", "info.json"), inode("sub")}
	time.Sleep(1200 * time.Millisecond) // past the entry timeout
	if after := []uint64{inode("overlay.qcow2"), inode("overlay.qcow2", "info.json"), inode("sub")}; !reflect.DeepEqual(before, after) {
		t.Errorf("inode numbers changed: %v then %v", before, after)
	}

	// The namespace cannot change.
	for _, script := range []string{
		"rm -f overlay.qcow2/info.json", "rm -rf sub", "mkdir x", "touch overlay.qcow2/new",
		"mv base.qcow2 b", "ln -s a b", "echo x > overlay.qcow2/info.json",
	} {
		if r := m.shell(t, script); r.code == 0 {
			t.Errorf("%s succeeded", script)
		}
	}
	if err := syscall.Setxattr(m.path("base.qcow2"), "user.x", []byte("1"), 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("setxattr: %v, want EPERM", err)
	}
	if err := syscall.Setxattr(m.path("base.qcow2", "info.json"), "user.x", []byte("1"), 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("setxattr on info.json: %v, want EPERM", err)
	}
	if got := names(t, m.path("overlay.qcow2")); !reflect.DeepEqual(got, want) {
		t.Errorf("after refused changes, overlay.qcow2 lists %q", got)
	}
}

// TestMountFilesMatchCLI checks that every good image's generated files are
// byte-equal to the command line's --output=json (which the other tests hold
// equal to qemu-img's), on a read-only mount of the image directory.
func TestMountFilesMatchCLI(t *testing.T) {
	good := filepath.Join(imagesDir, "good")
	m := mount(t, good, nil, "--read-only")
	for _, e := range entries("good") {
		if e.Notes["root"] != "good" {
			continue
		}
		rel := strings.TrimPrefix(e.Name, "good/")
		var f []string
		if e.Notes["fmt"] == "raw" {
			f = []string{"-f", "raw"}
		}
		t.Run(rel, func(t *testing.T) {
			if _, err := os.Stat(m.path(rel)); err != nil {
				t.Fatalf("not shown in the mount: %v\nmount log:\n%s", err, m.stderr)
			}
			for _, c := range []struct {
				file string
				args []string
			}{
				{"info.json", []string{"info", "--output=json"}},
				{"chain.json", []string{"info", "--output=json", "--backing-chain"}},
				{"map.json", []string{"map", "--output=json"}},
				{"map.svg", []string{"map", "--output=svg"}},
				{"check.json", []string{"check", "--output=json"}},
			} {
				args := append(append([]string{"--allow-dir", good}, c.args...), f...)
				want := execIn(t, good, binary, append(args, rel)...)
				got, err := os.ReadFile(m.path(rel, c.file))
				switch {
				case want.code == 63: // no checks for the format: check.json says so
					if err != nil || !bytes.Contains(got, []byte(`"code": "CHECK_UNSUPPORTED"`)) {
						t.Errorf("%s of a format without checks: %v\n%s", c.file, err, got)
					}
				case want.code == 1 && len(want.stdout) == 0:
					if err == nil {
						t.Errorf("%s: read %d bytes, the command line failed: %s", c.file, len(got), want.stderr)
					}
				case err != nil:
					t.Errorf("%s: %v (command line: exit %d)", c.file, err, want.code)
				case !bytes.Equal(got, want.stdout):
					t.Errorf("%s differs from instarfs %s\n got: %s\nwant: %s", c.file, strings.Join(c.args, " "), got, want.stdout)
				}
			}
			if _, err := os.Stat(m.path(rel, "rebase")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("read-only mount shows rebase: %v", err)
			}
		})
	}
	if r := m.shell(t, "rm -rf "+m.path("v3-c64k.qcow2")); r.code == 0 || !bytes.Contains(r.stderr, []byte("Read-only file system")) {
		t.Errorf("rm on a read-only mount: exit %d, %s", r.code, r.stderr)
	}
}

// TestMountControlErrors drives the control files from bash and checks each
// errno, and that status and result.json carry the reason.
func TestMountControlErrors(t *testing.T) {
	dir := demoCopy(t)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret.qcow2"), []byte("secret"), 0o644)
	rel, _ := filepath.Rel(dir, filepath.Join(outside, "secret.qcow2"))
	m := mount(t, dir, nil)
	tests := []struct {
		file, line string
		message    string // strerror bash prints
		code       string // result.json's error code
	}{
		{"rebase", "-x new-base.qcow2", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "'unterminated", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "-F qed new-base.qcow2", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "a.qcow2 b.qcow2", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", `'json:{"file.filename":"/etc/passwd"}'`, "Operation not permitted", "BACKING_PROTOCOL_REFUSED"},
		{"rebase", "nbd://localhost/x", "Operation not permitted", "BACKING_PROTOCOL_REFUSED"},
		{"rebase", rel, "Operation not permitted", "BACKING_PATH_OUTSIDE_ROOT"},
		{"rebase", "/etc/passwd", "Operation not permitted", "BACKING_PATH_OUTSIDE_ROOT"},
		{"rebase", "missing.qcow2", "No such file or directory", "BACKING_NOT_FOUND"},
		{"commit", "base.qcow2", "Invalid argument", "BAD_ARGUMENTS"},
		{"commit", "-r fast", "Invalid argument", "BAD_ARGUMENTS"},
		{"commit", "-t sometimes", "Invalid argument", "BAD_ARGUMENTS"},
		{"commit", "--drop=yes", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "--bogus new-base.qcow2", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "-u", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "-F qcow2", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "-u -b", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebase", "--backing=", "Invalid argument", "BAD_ARGUMENTS"},
		{"commit", "-d -b", "Invalid argument", "BAD_ARGUMENTS"},
	}
	for _, tt := range tests {
		t.Run(tt.file+" "+tt.line, func(t *testing.T) {
			r := m.shell(t, "echo "+quote(tt.line)+" > overlay.qcow2/"+tt.file)
			if r.code == 0 || !bytes.Contains(r.stderr, []byte("write error: "+tt.message)) {
				t.Errorf("exit %d, stderr %q; want write error: %s", r.code, r.stderr, tt.message)
			}
			if s := m.read(t, "overlay.qcow2", "status"); !strings.HasPrefix(s, "failed "+tt.file+": ") {
				t.Errorf("status %q", s)
			}
			var env struct {
				Operation string
				Error     map[string]string
			}
			if err := json.Unmarshal([]byte(m.read(t, "overlay.qcow2", "result.json")), &env); err != nil {
				t.Fatal(err)
			}
			if env.Operation != tt.file || !strings.EqualFold(codeOf(env.Error), tt.code) {
				t.Errorf("result.json: %+v, want code %s", env, tt.code)
			}
		})
	}
	// rebase -u repairs an image whose backing file is gone.
	if r := qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", "-u", "orphan.qcow2", "4M"); r.code != 0 {
		t.Fatalf("qemu-img create: %s", r.stderr)
	}
	if r := m.shell(t, "echo -u -F qcow2 base.qcow2 > orphan.qcow2/rebase"); r.code != 0 {
		t.Errorf("rebase -u of an orphan: exit %d, %s; status %s", r.code, r.stderr, m.read(t, "orphan.qcow2", "status"))
	}
	if l, _ := os.Readlink(m.path("orphan.qcow2", "backing")); l != "../base.qcow2" {
		t.Errorf("orphan.qcow2/backing -> %q after rebase -u", l)
	}

	// A control file takes one command per open; reading it gives its usage.
	if r := m.shell(t, "{ printf -- '-x'; printf ' y'; } > overlay.qcow2/commit"); r.code == 0 || !bytes.Contains(r.stderr, []byte("Invalid argument")) {
		t.Errorf("two writes: exit %d, %s", r.code, r.stderr)
	}
	if s := m.read(t, "overlay.qcow2", "status"); !strings.Contains(s, "second write") {
		t.Errorf("status after two writes: %q", s)
	}
	if r := m.shell(t, "cat overlay.qcow2/commit"); r.code != 0 || !bytes.HasPrefix(r.stdout, []byte("[-r RATE]")) {
		t.Errorf("reading a control file: exit %d, %s%s", r.code, r.stdout, r.stderr)
	}
}

// codeOf reads the error code from a decoded envelope's error object, whatever
// the case of its key.
func codeOf(e map[string]string) string {
	for k, v := range e {
		if strings.EqualFold(k, "code") {
			return v
		}
	}
	return ""
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// TestMountJobs runs rebase and commit through the control files with every
// way of writing (echo, echo -n, printf, tee), and checks status, result.json
// and the images with qemu-img.
func TestMountJobs(t *testing.T) {
	dir := demoCopy(t)
	m := mount(t, dir, nil)
	want := qemuContent(t, dir, "overlay.qcow2")

	if r := m.shell(t, "echo new-base.qcow2 > overlay.qcow2/rebase"); r.code != 0 {
		t.Fatalf("safe rebase: exit %d, %s", r.code, r.stderr)
	}
	if s := m.read(t, "overlay.qcow2", "status"); s != "ok rebase\n" {
		t.Errorf("status after rebase: %q", s)
	}
	if l, _ := os.Readlink(m.path("overlay.qcow2", "backing")); l != "../new-base.qcow2" {
		t.Errorf("backing -> %q after rebase", l)
	}
	if got := qemuContent(t, dir, "overlay.qcow2"); !bytes.Equal(got, want) {
		t.Errorf("guest content changed by the safe rebase")
	}
	// The same rebase through the command line gives the same bytes.
	cli := demoCopy(t)
	if r := execIn(t, cli, binary, "rebase", "-q", "-b", "new-base.qcow2", "overlay.qcow2"); r.code != 0 {
		t.Fatalf("instarfs rebase: %s", r.stderr)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "overlay.qcow2"))
	b, _ := os.ReadFile(filepath.Join(cli, "overlay.qcow2"))
	if !bytes.Equal(a, b) {
		t.Errorf("rebase through the mount and through the command line differ")
	}

	for _, script := range []string{
		"echo > overlay.qcow2/commit",
		"echo -n -d > overlay.qcow2/commit",
		"printf -- '-d\\n' > overlay.qcow2/commit",
		"echo -d | tee overlay.qcow2/commit >/dev/null",
		"/bin/echo -d > overlay.qcow2/commit",
		"echo -d >> overlay.qcow2/commit",
	} {
		if r := m.shell(t, script); r.code != 0 {
			t.Errorf("%s: exit %d, %s", script, r.code, r.stderr)
			continue
		}
		if s := m.read(t, "overlay.qcow2", "status"); s != "ok commit\n" {
			t.Errorf("%s: status %q", script, s)
		}
		var env map[string]any
		if err := json.Unmarshal([]byte(m.read(t, "overlay.qcow2", "result.json")), &env); err != nil || env["operation"] != "commit" || env["error"] != nil {
			t.Errorf("%s: result.json %v, %v", script, env, err)
		}
	}
	if got := qemuContent(t, dir, "overlay.qcow2"); !bytes.Equal(got, want) {
		t.Errorf("guest content of overlay.qcow2 changed by commit")
	}
	for _, img := range []string{"overlay.qcow2", "base.qcow2", "new-base.qcow2"} {
		if r := qemuImg(t, dir, "check", "-q", img); r.code != 0 {
			t.Errorf("qemu-img check %s: exit %d, %s", img, r.code, r.stderr)
		}
	}
}

// qemuContent is the guest-visible content of an image, read by qemu-img.
func qemuContent(t *testing.T, dir, img string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "flat.raw")
	if r := qemuImg(t, dir, "convert", "-U", "-O", "raw", img, out); r.code != 0 {
		t.Fatalf("qemu-img convert %s: %s", img, r.stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMountLocks checks QEMU's image locks both ways: an image qemu-io holds
// read-write is refused with EBUSY, and while instarfs commits into an image,
// qemu-io cannot open it. A second job on the same chain is EBUSY, and an
// interrupted write cancels its job at a safe point.
func TestMountLocks(t *testing.T) {
	dir := t.TempDir()
	qemutest.Create(t, filepath.Join(dir, "base.qcow2"), "qcow2", "16M")
	qemutest.Create(t, filepath.Join(dir, "top.qcow2"), "qcow2", "16M", "backing_file=base.qcow2", "backing_fmt=qcow2")
	qemutest.IO(t, filepath.Join(dir, "top.qcow2"), "", "write -P 0x5a 0 6M")
	m := mount(t, dir, nil)

	// qemu-io holds top.qcow2 read-write, as a running VM would.
	q := qemutest.System.Command(context.Background(), t, dir, "qemu-io", "-c", "sleep 60000", "top.qcow2")
	var qout bytes.Buffer
	q.Stdout, q.Stderr = &qout, &qout
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	stopQ := func() { q.Process.Kill(); q.Wait() }
	t.Cleanup(stopQ)
	if !waitLocked(t, dir, "top.qcow2") {
		t.Fatalf("qemu-io never locked top.qcow2: %s", qout.String())
	}
	// Its JSON files read as qemu-img -U reads it; status says it is in use.
	if s := m.read(t, "top.qcow2", "status"); s != "idle; in use by another process\n" {
		t.Errorf("status of an image qemu-io holds: %q", s)
	}
	for file, args := range map[string][]string{
		"info.json":  {"info", "--output=json"},
		"chain.json": {"info", "--output=json", "--backing-chain"},
		"map.json":   {"map", "--output=json"},
		"check.json": {"check", "--output=json"},
	} {
		want := qemuImg(t, dir, append(append(args, "-U"), "top.qcow2")...)
		if got, err := os.ReadFile(m.path("top.qcow2", file)); err != nil || string(got) != string(want.stdout) {
			t.Errorf("%s while qemu-io holds the image: %v\n%s\nqemu-img -U:\n%s", file, err, got, want.stdout)
		}
	}
	r := m.shell(t, "echo > top.qcow2/commit")
	if r.code == 0 || !bytes.Contains(r.stderr, []byte("Device or resource busy")) {
		t.Errorf("commit while qemu-io writes: exit %d, %s", r.code, r.stderr)
	}
	if s := m.read(t, "top.qcow2", "status"); !strings.Contains(s, "in use") {
		t.Errorf("status %q does not say the image is in use", s)
	}
	if r := m.shell(t, "echo -u -F qcow2 -b base.qcow2 > top.qcow2/rebase"); r.code == 0 || !bytes.Contains(r.stderr, []byte("Device or resource busy")) {
		t.Errorf("rebase while qemu-io writes: exit %d, %s", r.code, r.stderr)
	}
	stopQ()

	// instarfs commits 6 MiB slowly (-r): qemu-io can open neither image, a second
	// job on the chain is busy, status shows the progress without waiting.
	done := make(chan result, 1)
	go func() { done <- m.shell(t, "echo -r 1M > top.qcow2/commit") }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasPrefix(m.read(t, "top.qcow2", "status"), "running commit") {
		if time.Now().After(deadline) {
			t.Fatalf("the job did not start: status %q", m.read(t, "top.qcow2", "status"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, args := range [][]string{{"-c", "read 0 512", "top.qcow2"}, {"-c", "read 0 512", "base.qcow2"}, {"-r", "-c", "read 0 512", "base.qcow2"}} {
		if r := qemuIO(t, dir, args...); r.code == 0 || !bytes.Contains(r.stderr, []byte("lock")) {
			t.Errorf("qemu-io %v during the commit: exit %d, %s%s", args, r.code, r.stdout, r.stderr)
		}
	}
	// (A second write to the same control file would wait: the kernel
	// serialises writes to one file.)
	for _, ctl := range []string{"top.qcow2/rebase", "base.qcow2/commit"} {
		if r := m.shell(t, "echo -u base.qcow2 > "+ctl); r.code == 0 || !bytes.Contains(r.stderr, []byte("Device or resource busy")) {
			t.Errorf("second job through %s: exit %d, %s", ctl, r.code, r.stderr)
		}
	}
	if s := m.read(t, "base.qcow2", "status"); s != "busy: commit of top.qcow2\n" {
		t.Errorf("base.qcow2's status during the commit: %q", s)
	}
	if code := resultCode(t, m, "base.qcow2"); code != "CHAIN_BUSY" {
		t.Errorf("a refused job on a busy chain: base.qcow2/result.json code %q", code)
	}
	if r := <-done; r.code != 0 {
		t.Fatalf("slow commit: exit %d, %s", r.code, r.stderr)
	}
	if r := qemuIO(t, dir, "-c", "read -P 0x5a 0 6M", "base.qcow2"); r.code != 0 {
		t.Errorf("qemu-io after the commit: %s%s", r.stdout, r.stderr)
	}

	// Interrupting the writer cancels the job; the images stay consistent.
	if r := qemuIO(t, dir, "-c", "write -P 0x6b 0 2M", "top.qcow2"); r.code != 0 {
		t.Fatal(string(r.stderr))
	}
	execIn(t, m.mnt, "timeout", "-s", "INT", "0.5", "bash", "-c", "echo -r 1M > top.qcow2/commit")
	deadline = time.Now().Add(10 * time.Second)
	for strings.HasPrefix(m.read(t, "top.qcow2", "status"), "running") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := m.read(t, "top.qcow2", "status"); !strings.HasPrefix(s, "failed commit") {
		t.Errorf("status after an interrupted commit: %q", s)
	}
	if s := m.read(t, "top.qcow2", "result.json"); !strings.Contains(s, "CANCELLED") {
		t.Errorf("result.json after an interrupted commit: %s", s)
	}
	for _, img := range []string{"top.qcow2", "base.qcow2"} {
		if r := qemuImg(t, dir, "check", "-q", img); r.code != 0 {
			t.Errorf("qemu-img check %s after the interrupted commit: exit %d, %s", img, r.code, r.stderr)
		}
	}
}

// waitLocked waits until a process holds img's QEMU write lock (byte 101),
// as /proc/locks shows it; it takes no lock itself, so it cannot race qemu.
func waitLocked(t *testing.T, dir, img string) bool {
	t.Helper()
	st, err := os.Stat(filepath.Join(dir, img))
	if err != nil {
		t.Fatal(err)
	}
	suffix := ":" + strconv.FormatUint(st.Sys().(*syscall.Stat_t).Ino, 10)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile("/proc/locks")
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 8 || !strings.HasSuffix(f[5], suffix) {
				continue
			}
			start, _ := strconv.Atoi(f[6])
			end, _ := strconv.Atoi(f[7])
			if start <= 101 && 101 <= end {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// TestMountLifecycle checks the refusals before mounting and recovery from a
// crashed mount.
func TestMountLifecycle(t *testing.T) {
	dir := demoCopy(t)
	m := mount(t, dir, nil)
	if r := execIn(t, dir, binary, "mount", dir, m.mnt); r.code == 0 || !bytes.Contains(r.stderr, []byte("already a mountpoint")) {
		t.Errorf("mounting on a mountpoint: exit %d, %s", r.code, r.stderr)
	}
	sub := filepath.Join(dir, "inside")
	os.Mkdir(sub, 0o755)
	if r := execIn(t, dir, binary, "mount", dir, sub); r.code == 0 || !bytes.Contains(r.stderr, []byte("overlaps")) {
		t.Errorf("mounting inside the image directory: exit %d, %s", r.code, r.stderr)
	}

	// A killed instarfs leaves an ENOTCONN mount; the next mount clears it.
	m.killed = true
	m.cmd.Process.Kill()
	time.Sleep(200 * time.Millisecond)
	cmd := exec.Command(binary, "--log-level=info", "mount", dir, m.mnt)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(m.mnt, "overlay.qcow2", "info.json")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("remount over the stale mount failed:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// An external unmount ends instarfs with exit 0.
	if err := syscall.Unmount(m.mnt, 0); err != nil {
		exec.Command("fusermount3", "-u", m.mnt).Run()
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("instarfs after an external unmount: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stale mount") {
		t.Errorf("the stale mount was not reported:\n%s", stderr.String())
	}
}

// TestMountAllowOther checks that --allow-other turns on default_permissions:
// another user may read the JSON files but not write the owner's control
// files.
func TestMountAllowOther(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	dir := demoCopy(t)
	m := mount(t, dir, nil, "--allow-other")
	for d := filepath.Dir(m.mnt); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // let the other user reach the mountpoint
	}
	asNobody := func(script string) result {
		return execIn(t, m.mnt, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", script)
	}
	if r := asNobody("cat overlay.qcow2/info.json"); r.code != 0 || !bytes.Contains(r.stdout, []byte(`"filename": "overlay.qcow2"`)) {
		t.Errorf("another user reading info.json: exit %d, %s", r.code, r.stderr)
	}
	if r := asNobody("echo -d > overlay.qcow2/commit"); r.code == 0 || !bytes.Contains(r.stderr, []byte("Permission denied")) {
		t.Errorf("another user writing commit: exit %d, %s", r.code, r.stderr)
	}
	if s := m.read(t, "overlay.qcow2", "status"); s != "idle\n" {
		t.Errorf("status after a refused write by another user: %q", s)
	}
}

// TestMountHostileNoSecrets mounts the hostile images and reads every file of
// the tree: the contents of the secrets they point at never appear.
func TestMountHostileNoSecrets(t *testing.T) {
	hostile := entries("hostile")
	if len(hostile) == 0 {
		t.Skip("no hostile images in the manifest")
	}
	m := mount(t, filepath.Join(imagesDir, "hostile"), nil, "--read-only")
	var markers []string
	for _, e := range hostile {
		if mk := e.Notes["marker"]; mk != "" {
			markers = append(markers, mk)
		}
	}
	files := 0
	filepath.WalkDir(m.mnt, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&os.ModeSymlink != 0 {
			return nil
		}
		b, _ := os.ReadFile(p) // many fail (EPERM, EIO): that is the point
		files++
		for _, mk := range markers {
			if bytes.Contains(b, []byte(mk)) {
				t.Errorf("%s shows the secret marker %q", p, mk)
			}
		}
		return nil
	})
	if files == 0 {
		t.Errorf("the hostile tree shows no file at all")
	}
	r := execIn(t, m.mnt, "bash", "-c", "grep -rl . . 2>/dev/null | wc -l")
	t.Logf("%d generated files read, %s readable", files, bytes.TrimSpace(r.stdout))
}

// logBuffer keeps a mount's log: the command's copier writes it while a test
// reads it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
