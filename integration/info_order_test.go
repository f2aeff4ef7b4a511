package integration

import (
	"path/filepath"
	"testing"
)

// TestInfoVmdkMatchesQemuBytes compares info --output=json of vmdk images
// with qemu-img's byte for byte: the keys of extents[] in qemu-img's order.
func TestInfoVmdkMatchesQemuBytes(t *testing.T) {
	dir := t.TempDir()
	shellIn(t, dir, `set -e
qemu-img create -q -f vmdk sparse.vmdk 1M
qemu-io -f vmdk -c 'write -P 1 0 64k' sparse.vmdk >/dev/null
qemu-img convert -O vmdk -o subformat=streamOptimized sparse.vmdk stream.vmdk`)
	for _, name := range []string{"sparse.vmdk", "stream.vmdk"} {
		r := runOp(t, dir, nil, "info", "--output=json", name)
		q := qemuImg(t, dir, "info", "--output=json", name)
		if r.code != 0 || q.code != 0 || string(r.stdout) != string(q.stdout) {
			t.Errorf("%s: instarfs (exit %d):\n%s\nqemu-img (exit %d):\n%s", filepath.Base(name), r.code, r.stdout, q.code, q.stdout)
		}
	}
}
