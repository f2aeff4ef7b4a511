package microvm

import (
	"os"
	"testing"

	"instarfs/vmm/microvm/guest"
	"instarfs/vmm/sandboxtest"
	"instarfs/vmm/sandboxtest/testworker"
)

// TestMain lets this test binary (static, CGO_ENABLED=0) be the /init of the
// conformance suite's guest: as pid 1 it sets the guest up as the product's
// /init does and serves the test worker's operations.
func TestMain(m *testing.M) {
	if os.Getpid() == 1 {
		guest.Run(testworker.Serve, nil)
	}
	os.Exit(m.Run())
}

// TestConformance runs the sandbox conformance suite through a TCG guest
// whose /init is this test binary.
func TestConformance(t *testing.T) {
	// Known failures, left for later: sessions (Start) are not served by a
	// guest; the worker sees ImageRef.Size, which the suite's echo does not
	// expect; a block device has no SEEK_DATA and no ftruncate (the
	// seek-data-image and ftruncate-image probes, Stress); test-exit's
	// status is not yet found on the console. It boots some 20 guests.
	if os.Getenv("INSTARFS_MICROVM_CONFORMANCE") == "" {
		t.Skip("set INSTARFS_MICROVM_CONFORMANCE=1 to run the conformance suite through a TCG guest (known failures listed in the test)")
	}
	s := tcg(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.init = exe
	sandboxtest.Run(t, s, sandboxtest.Options{Unstartable: &Sandbox{Accel: TCG, GuestDir: t.TempDir()}})
}
