package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/worker"
)

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == proto.WorkerArg0 {
		worker.Main()
	}
	vmm.UseWorker("/proc/self/exe") // the test binary is its own worker
	os.Exit(m.Run())
}

// counting counts the workers a sandbox starts.
type counting struct {
	vmm.Sandbox
	runs atomic.Int32
}

func (c *counting) Run(ctx context.Context, job vmm.Job) (json.RawMessage, error) {
	c.runs.Add(1)
	return c.Sandbox.Run(ctx, job)
}

func (c *counting) Start(ctx context.Context, job vmm.Job) (*vmm.Session, error) {
	c.runs.Add(1)
	return c.Sandbox.Start(ctx, job)
}

// TestOneWorkerPerCommand runs each command on a chain of three images and
// counts the workers it starts: one, whatever the chain's depth.
func TestOneWorkerPerCommand(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	for _, tc := range []struct {
		name string
		args []string // FILE is appended
	}{
		{"info", []string{"info"}},
		{"info --backing-chain", []string{"info", "--backing-chain", "--output=json"}},
		{"map", []string{"map", "--output=json"}},
		{"check", []string{"check"}},
		{"check -r leaks", []string{"check", "-r", "leaks"}},
		{"rebase onto an image of the chain", []string{"rebase", "-b", "base.qcow2", "-F", "qcow2"}},
		{"rebase onto another chain", []string{"rebase", "-b", "other.qcow2", "-F", "qcow2"}},
		{"rebase, the new format detected", []string{"rebase", "-b", "other.qcow2"}},
		{"detach", []string{"rebase", "-b", ""}},
		{"rebase -u", []string{"rebase", "-u", "-b", "other.qcow2", "-F", "qcow2"}},
		{"rebase -u, the new format detected", []string{"rebase", "-u", "-b", "other.qcow2"}},
		{"rebase -u to a missing file", []string{"rebase", "-u", "-b", "missing.qcow2", "-F", "qcow2"}},
		{"commit", []string{"commit"}},
		{"commit -d", []string{"commit", "-d"}},
		{"commit -b", []string{"commit", "-b", "base.qcow2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2")
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2")
			qemuImg(t, dir, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "other.qcow2")
			sb := &counting{}
			a := newApp()
			a.global.wrapSandbox = func(inner vmm.Sandbox) vmm.Sandbox {
				sb.Sandbox = inner
				return sb
			}
			args := append(append([]string{}, tc.args...), filepath.Join(dir, "top.qcow2"))
			before := openFiles(t)
			if code := a.run(args); code != 0 {
				t.Fatalf("instarfs %q exited %d", args, code)
			}
			if n := sb.runs.Load(); n != 1 {
				t.Errorf("instarfs %q started %d workers, want 1", args, n)
			}
			// The mount runs commands for as long as it lives: a command
			// leaves no image open (nor locked) behind.
			if after := openFiles(t); after > before {
				t.Errorf("instarfs %q left %d files open", args, after-before)
			}
		})
	}
}

func qemuImg(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("qemu-img", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %q: %v\n%s", args, err, out)
	}
}

// openFiles counts the files this process has open, the roots of the
// commands' policies aside (they stay open until the process exits).
func openFiles(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range es {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasSuffix(target, ".qcow2") {
			n++
		}
	}
	return n
}
