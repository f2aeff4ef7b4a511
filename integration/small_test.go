package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// TestMountSmallThings: what ls, find and stat show of the tree, check.json
// of a raw image, the status line of a refused write, and the messages of a
// mount that cannot start.
func TestMountSmallThings(t *testing.T) {
	dir := demoCopy(t)
	os.WriteFile(filepath.Join(dir, "disk.raw"), make([]byte, 1<<20), 0o644)
	if r := qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", "top.qcow2", "1M"); r.code != 0 {
		t.Fatal(string(r.stderr))
	}
	m := mount(t, dir, nil)

	// backing is a symlink with the image's times, whatever asks first.
	st, err := os.Lstat(m.path("overlay.qcow2", "backing"))
	host, _ := os.Stat(filepath.Join(dir, "overlay.qcow2"))
	if err != nil || st.Mode()&os.ModeSymlink == 0 || !st.ModTime().Equal(host.ModTime()) || st.Size() != int64(len("../base.qcow2")) {
		t.Errorf("lstat backing: %v, %v (image mtime %v)", st, err, host.ModTime())
	}
	if st, err := os.Stat(m.mnt); err != nil || st.Sys().(*syscall.Stat_t).Ino == 0 {
		t.Errorf("the mount root's inode: %v, %v", st, err)
	}
	for _, d := range []string{".", "overlay.qcow2"} {
		r := m.shell(t, "ls -a1 "+d)
		if lines := strings.Split(string(r.stdout), "\n"); len(lines) < 2 || lines[0] != "." || lines[1] != ".." {
			t.Errorf("ls -a %s: %q", d, r.stdout)
		}
	}

	// check.json of a raw image says checks are not supported, not clean.
	var check map[string]any
	if err := json.Unmarshal([]byte(m.read(t, "disk.raw", "check.json")), &check); err != nil {
		t.Fatal(err)
	}
	if e, _ := check["error"].(map[string]any); e["code"] != "CHECK_UNSUPPORTED" || check["check-errors"] != nil {
		t.Errorf("check.json of a raw image: %v", check)
	}

	// A refused write's status names the command once, and the code.
	m.shell(t, "echo --bogus > overlay.qcow2/rebase")
	if s := m.read(t, "overlay.qcow2", "status"); !strings.HasPrefix(s, "failed rebase: BAD_ARGUMENTS: ") || strings.Contains(s, "rebase: rebase:") {
		t.Errorf("status %q", s)
	}

	// A missing IMAGEDIR says so.
	if r := execIn(t, dir, binary, "mount", filepath.Join(dir, "nope"), t.TempDir()); r.code != 1 || !bytes.Contains(r.stderr, []byte("does not exist")) {
		t.Errorf("mount of a missing directory: exit %d, %s", r.code, r.stderr)
	}
}

// TestMountUnprivilegedFailure: a user who cannot open /dev/fuse is told what
// fusermount3 said and what to do about it, not a wait status.
func TestMountUnprivilegedFailure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	for _, tool := range []string{"setpriv", "fusermount3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	if st, err := os.Stat("/dev/fuse"); err != nil || st.Mode().Perm()&0o006 == 0o006 {
		t.Skip("/dev/fuse is open to every user here")
	}
	dir, mnt := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, mnt, filepath.Dir(dir)} {
		os.Chmod(d, 0o777)
	}
	r := execIn(t, "/", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", binary, "mount", dir, mnt)
	if r.code != 1 || !bytes.Contains(r.stderr, []byte("MOUNT_FAILED")) || !bytes.Contains(r.stderr, []byte("failed to open /dev/fuse: Permission denied")) ||
		!bytes.Contains(r.stderr, []byte("give it read and write access")) || bytes.Contains(r.stderr, []byte("exited with code")) {
		t.Errorf("unprivileged mount without /dev/fuse access: exit %d, %s", r.code, r.stderr)
	}
	if isMounted(mnt) {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}

// TestProgressOnStdout: -p prints qemu-img's progress lines on stdout, the
// worker's between the first and the last (the worker sends them only when
// they are shown).
func TestProgressOnStdout(t *testing.T) {
	dir := demoCopy(t)
	between := regexp.MustCompile(`\(([1-9]|[1-9][0-9])\.[0-9]{2}/100%\)\r`)
	r := execIn(t, dir, binary, "rebase", "-p", "-b", "new-base.qcow2", "-F", "qcow2", "overlay.qcow2")
	if r.code != 0 || !bytes.HasPrefix(r.stdout, []byte("    (0.00/100%)\r")) || !bytes.Contains(r.stdout, []byte("    (100.00/100%)\r\n")) ||
		!between.Match(r.stdout) || bytes.Contains(r.stderr, []byte("%")) {
		t.Errorf("rebase -p: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = execIn(t, dir, binary, "commit", "-p", "overlay.qcow2")
	if r.code != 0 || !bytes.HasSuffix(r.stdout, []byte("    (100.00/100%)\r\nImage committed.\n")) ||
		!between.Match(r.stdout) || bytes.Contains(r.stderr, []byte("%")) {
		t.Errorf("commit -p: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
