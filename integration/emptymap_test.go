package integration

import (
	"bytes"
	"testing"
)

// TestMapEmptyImage: map of a 0-byte raw image, a qcow2 image of virtual size
// 0 and an overlay of size 0 prints exactly what qemu-img map prints, in both
// forms, on the command line and in the mount's map.json.
func TestMapEmptyImage(t *testing.T) {
	dir := t.TempDir()
	shellIn(t, dir, `: > zero.raw && qemu-img create -q -f qcow2 zero.qcow2 0 &&
qemu-img create -q -f qcow2 -b zero.raw -F raw over.qcow2 0`)
	for _, args := range [][]string{{"-f", "raw", "zero.raw"}, {"zero.qcow2"}, {"over.qcow2"}} {
		for _, output := range []string{"human", "json"} {
			a := append([]string{"--output=" + output}, args...)
			ours := runOp(t, dir, nil, "map", a...)
			theirs := qemuImg(t, dir, append([]string{"map"}, a...)...)
			if ours.code != theirs.code || !bytes.Equal(ours.stdout, theirs.stdout) {
				t.Errorf("map %v: exit %d, %q%s; qemu-img exit %d, %q", a, ours.code, ours.stdout, ours.stderr, theirs.code, theirs.stdout)
			}
		}
	}
	m := mount(t, dir, nil)
	for _, image := range []string{"zero.qcow2", "over.qcow2"} {
		want := qemuImg(t, dir, "map", "--output=json", image)
		if got := m.read(t, image, "map.json"); got != string(want.stdout) {
			t.Errorf("%s/map.json %q, qemu-img map %q", image, got, want.stdout)
		}
	}
}
