package microvm

import (
	"os"
	"testing"
	"time"

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

// TestConformance runs the sandbox conformance suite through TCG guests
// whose /init is this test binary: some 30 boots, two at a time (go test's
// -parallel is GOMAXPROCS).
func TestConformance(t *testing.T) {
	s := tcg(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.init = exe
	start := time.Now()
	sandboxtest.Run(t, s, sandboxtest.Options{
		Unstartable: &Sandbox{Accel: TCG, GuestDir: t.TempDir()},
		Parallel:    true,
		// A boot takes 2–4 s on an idle host, and ten times that on a
		// loaded one.
		Boot: 2 * time.Minute,
	})
	t.Cleanup(func() { t.Logf("the conformance suite took %v under TCG", time.Since(start)) })
}
