package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"instarfs/vmm"
)

// TestMountWorkerStarts lists a mount as `ls -la` does and reads every
// generated document of each image: the first time costs a worker per image
// to list the directory (which makes info.json too) and one per image for
// all its other documents; a second time, with nothing changed, no worker at
// all.
func TestMountWorkerStarts(t *testing.T) {
	dir := t.TempDir()
	qemuImg(t, dir, "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
	qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2")
	qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2")
	qemuImg(t, dir, "create", "-q", "-f", "vmdk", "alone.vmdk", "4M")
	const images = 4
	sb, mnt := mountCounting(t, dir)

	// Listing the mount probed every image once; the first reads of every
	// info.json start no worker then: the probe described the image, and
	// info.json (qemu-img info) describes the top alone.
	top, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if listed := sb.runs.Load(); listed != images {
		t.Errorf("listing %d images started %d workers, want %d", images, listed, images)
	}
	listed := sb.runs.Load()
	for _, e := range top {
		if _, err := os.ReadFile(filepath.Join(mnt, e.Name(), "info.json")); err != nil {
			t.Fatal(err)
		}
	}
	if n := sb.runs.Load() - listed; n != 0 {
		t.Errorf("the first reads of every info.json started %d workers, want 0", n)
	}

	listAll := func() {
		t.Helper()
		top, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		if len(top) != images {
			t.Fatalf("%d entries in the mount, want %d", len(top), images)
		}
		for _, e := range top {
			d := filepath.Join(mnt, e.Name())
			files, err := os.ReadDir(d)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				p := filepath.Join(d, f.Name())
				if _, err := os.Lstat(p); err != nil {
					t.Fatal(err)
				}
				if strings.HasSuffix(f.Name(), ".json") {
					if _, err := os.ReadFile(p); err != nil {
						t.Errorf("reading %s: %v", p, err)
					}
				}
			}
		}
	}
	listAll()
	cold := sb.runs.Load()
	t.Logf("a cold listing started %d workers for %d images", cold, images)
	if cold > 2*images {
		t.Errorf("a cold listing started %d workers for %d images, want at most %d", cold, images, 2*images)
	}
	listAll()
	if warm := sb.runs.Load() - cold; warm != 0 {
		t.Errorf("a warm listing started %d workers, want 0", warm)
	}
}

// mountCounting mounts dir in the background, counting the workers its
// sandbox starts, and waits until the mount is up. Cleanup unmounts it, also
// when the test fails.
func mountCounting(t *testing.T, dir string) (*counting, string) {
	t.Helper()
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil || os.Geteuid() != 0 {
		t.Skipf("mounting needs root and /dev/fuse (%v)", err)
	} else {
		f.Close()
	}
	mnt := t.TempDir()
	sb := &counting{}
	a := newApp()
	a.global.wrapSandbox = func(inner vmm.Sandbox) vmm.Sandbox {
		sb.Sandbox = inner
		return sb
	}
	exited := make(chan int, 1)
	go func() { exited <- a.run([]string{"mount", dir, mnt}) }()
	t.Cleanup(func() {
		syscall.Unmount(mnt, 0)
		select {
		case code := <-exited:
			if code != 0 {
				t.Errorf("mount exited %d", code)
			}
		case <-time.After(30 * time.Second):
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			t.Errorf("mount did not end after the unmount")
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; {
		if es, _ := os.ReadDir(mnt); len(es) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mount did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return sb, mnt
}

// TestMountControlWorkerStarts writes the rebase and commit control files of
// an image whose chain the mount has not opened yet (only listed): the
// operation starts one worker, which both finds the chain (the job reserves
// each member as the worker asks for it) and runs the operation. (repair
// reads the top alone and still opens the chain first, to reserve it.)
func TestMountControlWorkerStarts(t *testing.T) {
	for _, tc := range []struct {
		file, line string
	}{
		{"commit", ""},
		{"commit", "-d"},
		{"commit", "-b base.qcow2"},
		{"rebase", "-b base.qcow2 -F qcow2"},
		{"rebase", "-b other.qcow2 -F qcow2"},
		{"rebase", "-b other.qcow2"},
		{"rebase", "-b \"\""},
		{"rebase", "-u -b other.qcow2 -F qcow2"},
		{"rebase", "-u -b missing.qcow2 -F qcow2"},
	} {
		t.Run(tc.file+" "+tc.line, func(t *testing.T) {
			dir := t.TempDir()
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2")
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2")
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "other.qcow2")
			sb, mnt := mountCounting(t, dir)
			if _, err := os.Stat(filepath.Join(mnt, "top.qcow2", tc.file)); err != nil {
				t.Fatal(err)
			}
			before := sb.runs.Load()
			if err := os.WriteFile(filepath.Join(mnt, "top.qcow2", tc.file), []byte(tc.line+"\n"), 0); err != nil {
				status, _ := os.ReadFile(filepath.Join(mnt, "top.qcow2", "status"))
				t.Fatalf("writing %q to %s: %v (%s)", tc.line, tc.file, err, status)
			}
			if n := sb.runs.Load() - before; n != 1 {
				t.Errorf("%s %q started %d workers, want 1", tc.file, tc.line, n)
			}
			if status, _ := os.ReadFile(filepath.Join(mnt, "top.qcow2", "status")); string(status) != "ok "+tc.file+"\n" {
				t.Errorf("status after %s %q: %q", tc.file, tc.line, status)
			}
		})
	}
}
