package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestHardLinkOutsideRootsFollowed pins the documented choice for hard links
// (docs/sandbox.md, threat model): a hard link under a root to a file that
// also has a name outside every root is the file itself, and is followed; a
// symlink to the same file is refused. What keeps a user from linking a file
// they could not read and write is the kernel's fs.protected_hardlinks.
func TestHardLinkOutsideRootsFollowed(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	shellIn(t, outside, "qemu-img create -q -f qcow2 base.qcow2 1M && qemu-io -c 'write -P 0x5a 0 64k' base.qcow2")
	if err := os.Link(filepath.Join(outside, "base.qcow2"), filepath.Join(dir, "hard.qcow2")); err != nil {
		t.Skipf("cannot hard-link across the test's directories: %v", err)
	}
	if err := os.Symlink(filepath.Join(outside, "base.qcow2"), filepath.Join(dir, "soft.qcow2")); err != nil {
		t.Fatal(err)
	}
	shellIn(t, dir, "qemu-img create -q -f qcow2 -u -b hard.qcow2 -F qcow2 viahard.qcow2 1M && qemu-img create -q -f qcow2 -u -b soft.qcow2 -F qcow2 viasoft.qcow2 1M")

	r := runOp(t, dir, nil, "map", "--output=json", "viahard.qcow2")
	want := qemuImg(t, dir, "map", "--output=json", "viahard.qcow2")
	if r.code != 0 || !bytes.Equal(r.stdout, want.stdout) {
		t.Errorf("map through a hard link: exit %d, %s%s; qemu-img %s", r.code, r.stdout, r.stderr, want.stdout)
	}
	r = runOp(t, dir, nil, "map", "--output=json", "viasoft.qcow2")
	if r.code != 1 || !bytes.Contains(r.stderr, []byte("BACKING_PATH_OUTSIDE_ROOT")) {
		t.Errorf("map through a symlink out of the root: exit %d, %s; want BACKING_PATH_OUTSIDE_ROOT", r.code, r.stderr)
	}
}
