package microvm

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"instarfs/vmm"
)

// tcg returns a TCG sandbox on the guest `make guest` built, or skips when
// QEMU or the guest is missing (make test installs and builds both).
func tcg(t *testing.T) *Sandbox {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "build", "guest"))
	if err != nil {
		t.Fatal(err)
	}
	s := &Sandbox{Accel: TCG, GuestDir: dir}
	if _, _, err := s.Available(); err != nil {
		t.Skipf("microvm unavailable (make test installs QEMU and runs make guest): %v", err)
	}
	return s
}

func TestNoop(t *testing.T) {
	s := tcg(t)
	start := time.Now()
	res, err := s.Run(context.Background(), vmm.Job{Request: vmm.Request{Op: vmm.OpNoop}})
	if err != nil {
		t.Fatal(err)
	}
	if string(res) != "{}" {
		t.Fatalf("noop result %s", res)
	}
	t.Logf("noop under TCG in %v", time.Since(start))
}
