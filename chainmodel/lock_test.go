package chainmodel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

// TestLockConflicts opens one file twice — two open file descriptions, as two
// processes would have — and checks which pairs of opens QEMU's locks allow.
func TestLockConflicts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		first, second bool // writable
		ok            bool
	}{
		{false, false, true},
		{false, true, false},
		{true, false, false},
		{true, true, false},
	}
	for _, tt := range tests {
		a, b := openRW(t, path), openRW(t, path)
		if err := LockImage(a, "img", tt.first); err != nil {
			t.Fatalf("first lock (writable=%v): %v", tt.first, err)
		}
		err := LockImage(b, "img", tt.second)
		if tt.ok && err != nil {
			t.Errorf("writable=%v then writable=%v: %v", tt.first, tt.second, err)
		}
		if !tt.ok && errcode.Of(err) != errcode.ImageInUse {
			t.Errorf("writable=%v then writable=%v: got %v, want IMAGE_IN_USE", tt.first, tt.second, err)
		}
		UnlockImage(a)
		if err := LockImage(b, "img", tt.second); err != nil {
			t.Errorf("after unlock, writable=%v: %v", tt.second, err)
		}
		a.Close()
		b.Close()
	}
}

func openRW(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestLockInteropQemu checks the locks against qemu-io, both ways.
func TestLockInteropQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	qemutest.Create(t, img, "qcow2", "1M")

	// qemu-io holds the image read-write: instarfs may neither read nor write it.
	q := qemutest.System.Command(context.Background(), t, "", "qemu-io", "-c", "sleep 20000", img)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Process.Kill(); q.Wait() })
	f := openRW(t, img)
	defer f.Close()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for {
		err = LockImage(f, "a.qcow2", false)
		if err != nil || time.Now().After(deadline) {
			break
		}
		UnlockImage(f)
		time.Sleep(20 * time.Millisecond)
	}
	if errcode.Of(err) != errcode.ImageInUse || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("read lock while qemu-io writes: %v, want IMAGE_IN_USE", err)
	}
	if err := LockImage(f, "a.qcow2", true); errcode.Of(err) != errcode.ImageInUse {
		t.Fatalf("write lock while qemu-io writes: %v, want IMAGE_IN_USE", err)
	}
	q.Process.Kill()
	q.Wait()

	// instarfs holds it for writing: qemu-io may not open it at all, and with
	// force-share (-U) only read-only.
	if err := LockImage(f, "a.qcow2", true); err != nil {
		t.Fatalf("write lock on a free image: %v", err)
	}
	for _, args := range [][]string{{"-c", "read 0 512", img}, {"-r", "-c", "read 0 512", img}} {
		r := qemutest.RunIO(t, "", args...)
		if r.Code == 0 || !strings.Contains(string(r.Stderr), "lock") {
			t.Errorf("qemu-io %v while instarfs writes: exit %d\n%s%s", args, r.Code, r.Stdout, r.Stderr)
		}
	}
	UnlockImage(f)
	if r := qemutest.RunIO(t, "", "-c", "read 0 512", img); r.Code != 0 {
		t.Errorf("qemu-io after unlock: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}
