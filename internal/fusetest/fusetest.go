// Package fusetest holds what tests that mount a FUSE filesystem share.
package fusetest

import (
	"os"
	"os/exec"
	"testing"
)

// Need skips t unless this process can mount a FUSE filesystem: /dev/fuse
// opens for reading and writing, and the process is root or fusermount3 is
// installed.
func Need(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no usable /dev/fuse (%v): mount tests need FUSE", err)
	}
	f.Close()
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			t.Skip("not root and no fusermount3: cannot mount")
		}
	}
}
