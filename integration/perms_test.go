package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestMountAllowOtherPermissions: with --allow-other a second, unprivileged
// user (uid 65534) can do in the mount what the host lets them do with the
// files, and nothing more: a 0700 directory is closed, a 0600 image's JSON files
// are unreadable, control files are writable only by who can write the image.
func TestMountAllowOtherPermissions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	dir := demoCopy(t)
	shellIn(t, dir, `
mkdir private && cp base.qcow2 private/hidden.qcow2 && chmod 0700 private
cp base.qcow2 secret.qcow2 && chmod 0600 secret.qcow2
cp base.qcow2 zero.qcow2 && chmod 0 zero.qcow2
cp base.qcow2 theirs.qcow2 && chown 65534:65534 theirs.qcow2 && chmod 0600 theirs.qcow2
chmod 0644 base.qcow2 overlay.qcow2 new-base.qcow2`)
	os.Chmod(dir, 0o700)
	m := mount(t, dir, nil, "--allow-other")
	for d := filepath.Dir(m.mnt); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // let the other user reach the mountpoint
	}
	asNobody := func(script string) result {
		return execIn(t, "/", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", "cd "+quote(m.mnt)+" && "+script)
	}
	if r := asNobody("ls"); r.code == 0 || !bytes.Contains(r.stderr, []byte("Permission denied")) {
		t.Errorf("another user entering a mount of a 0700 directory: exit %d, %s", r.code, r.stderr)
	}
	os.Chmod(dir, 0o755)
	time.Sleep(1100 * time.Millisecond) // the attribute timeout
	tests := []struct {
		script string
		ok     bool
	}{
		{"ls", true},
		{"cat base.qcow2/info.json", true},
		{"ls private", false},
		{"cat private/hidden.qcow2/info.json", false},
		{"ls secret.qcow2", false},
		{"cat secret.qcow2/info.json", false},
		{"cat secret.qcow2/map.json", false},
		{"cat secret.qcow2/status", false},
		{"cat zero.qcow2/info.json", false},
		{"echo -d > overlay.qcow2/commit", false},
		{"cat overlay.qcow2/rebase", false},
		{"cat theirs.qcow2/check.json", true},
		{"cat theirs.qcow2/rebase", true},
		{"echo -u -F qcow2 -b base.qcow2 > theirs.qcow2/rebase", true},
	}
	for _, tt := range tests {
		r := asNobody(tt.script)
		if ok := r.code == 0; ok != tt.ok {
			t.Errorf("uid 65534: %s: exit %d, %s; want success %v", tt.script, r.code, r.stderr, tt.ok)
		} else if !ok && !bytes.Contains(r.stderr, []byte("Permission denied")) {
			t.Errorf("uid 65534: %s: %s; want Permission denied", tt.script, r.stderr)
		}
	}
	if s := m.read(t, "overlay.qcow2", "status"); s != "idle\n" {
		t.Errorf("status after a refused write by another user: %q", s)
	}
	if got := backingOf(t, dir, "theirs.qcow2"); got != "base.qcow2" {
		t.Errorf("the owner's rebase -u through the mount: backing %q", got)
	}
	// What ls -l shows mirrors the host.
	for _, c := range []struct {
		path string
		mode os.FileMode
		uid  uint32
	}{
		{"private", os.ModeDir | 0o700, 0},
		{"secret.qcow2", os.ModeDir | 0o500, 0},
		{"secret.qcow2/info.json", 0o400, 0},
		{"secret.qcow2/rebase", 0o600, 0},
		{"base.qcow2", os.ModeDir | 0o555, 0},
		{"base.qcow2/check.json", 0o444, 0},
		{"base.qcow2/commit", 0o600, 0},
		{"zero.qcow2", os.ModeDir, 0},
		{"zero.qcow2/map.json", 0, 0},
		{"theirs.qcow2/status", 0o400, 65534},
		{"overlay.qcow2/backing", os.ModeSymlink | 0o777, 0},
	} {
		st, err := os.Lstat(m.path(c.path))
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		if st.Mode() != c.mode || st.Sys().(*syscall.Stat_t).Uid != c.uid {
			t.Errorf("%s: mode %v uid %d, want %v uid %d", c.path, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, c.mode, c.uid)
		}
	}
}
