package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMountCopyTools copies an image tree out of the mount with the tools
// people use — cp -r, tar, rsync -a, Python's shutil.copytree — and greps it:
// each succeeds and every copied file equals what cat reads. stat reports
// every generated file's real size, control files read as their usage, mmap
// reads a generated file, and file(1) sees JSON.
func TestMountCopyTools(t *testing.T) {
	dir := demoCopy(t)
	m := mount(t, dir, nil)
	out := t.TempDir()
	tools := []struct{ name, script string }{
		{"cp", "cp -r overlay.qcow2 " + quote(filepath.Join(out, "cp"))},
		{"tar", "mkdir " + quote(filepath.Join(out, "tar")) + " && tar -cf - overlay.qcow2 | tar -C " + quote(filepath.Join(out, "tar")) + " -xf - && mv " + quote(filepath.Join(out, "tar", "overlay.qcow2")) + " " + quote(filepath.Join(out, "tar.d"))},
		{"rsync", "rsync -a overlay.qcow2/ " + quote(filepath.Join(out, "rsync")) + "/"},
		{"python", "python3 -c 'import shutil, sys; shutil.copytree(\"overlay.qcow2\", sys.argv[1], symlinks=True)' " + quote(filepath.Join(out, "python"))},
	}
	for _, tool := range tools {
		if tool.name == "rsync" {
			if _, err := exec.LookPath("rsync"); err != nil {
				t.Errorf("rsync not installed (make test-deps installs it)")
				continue
			}
		}
		r := m.shell(t, tool.script)
		if r.code != 0 {
			t.Errorf("%s: exit %d, %s", tool.name, r.code, r.stderr)
			continue
		}
		copied := filepath.Join(out, tool.name)
		if tool.name == "tar" {
			copied += ".d"
		}
		for _, f := range []string{"info.json", "chain.json", "map.json", "check.json", "status", "result.json", "rebase", "commit"} {
			want := m.read(t, "overlay.qcow2", f)
			got, err := os.ReadFile(filepath.Join(copied, f))
			if err != nil || string(got) != want {
				t.Errorf("%s copied %s as %q (%v), cat reads %q", tool.name, f, got, err, want)
			}
		}
		if l, err := os.Readlink(filepath.Join(copied, "backing")); err != nil || l != "../base.qcow2" {
			t.Errorf("%s copied backing as %q, %v", tool.name, l, err)
		}
	}
	if r := m.shell(t, "grep -r -l '\"format\": \"qcow2\"' . | sort"); r.code != 0 || !bytes.Contains(r.stdout, []byte("./overlay.qcow2/info.json")) {
		t.Errorf("grep -r: exit %d, %s%s", r.code, r.stdout, r.stderr)
	}

	// Sizes are real.
	for _, f := range []string{"info.json", "chain.json", "map.json", "check.json", "status", "result.json", "rebase", "commit", "backing"} {
		st, err := os.Lstat(m.path("overlay.qcow2", f))
		if err != nil {
			t.Fatal(err)
		}
		want := len("../base.qcow2")
		if f != "backing" {
			want = len(m.read(t, "overlay.qcow2", f))
		}
		if st.Size() != int64(want) {
			t.Errorf("%s: stat says %d bytes, it has %d", f, st.Size(), want)
		}
	}
	if usage := m.read(t, "overlay.qcow2", "rebase"); !strings.HasPrefix(usage, "-b BACKING") || !strings.Contains(usage, "\n-u -b \"\"") {
		t.Errorf("reading rebase: %q", usage)
	}

	// mmap, private and shared, reads the content.
	py := `
import mmap, os, sys
p = sys.argv[1]
want = open(p, 'rb').read()
fd = os.open(p, os.O_RDONLY)
n = os.fstat(fd).st_size
for flags in (mmap.MAP_PRIVATE, mmap.MAP_SHARED):
    m = mmap.mmap(fd, n, flags, mmap.PROT_READ)
    assert m[:] == want, (flags, m[:], want)
    m.close()
print("ok")`
	for _, f := range []string{"info.json", "map.json", "status"} {
		if r := execIn(t, m.mnt, "python3", "-c", py, filepath.Join("overlay.qcow2", f)); r.code != 0 || string(r.stdout) != "ok\n" {
			t.Errorf("mmap of %s: exit %d, %s%s", f, r.code, r.stdout, r.stderr)
		}
	}
	m.shell(t, "echo -x > overlay.qcow2/rebase") // result.json is an envelope now, not null
	if r := m.shell(t, "file -b overlay.qcow2/info.json overlay.qcow2/chain.json overlay.qcow2/result.json"); r.code != 0 || bytes.Count(r.stdout, []byte("JSON")) != 3 {
		t.Errorf("file(1): %s%s", r.stdout, r.stderr)
	}
}
