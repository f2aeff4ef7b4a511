package integration

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two operations on one chain at once: whichever starts first proceeds, the
// other is refused at once — IMAGE_IN_USE from the image locks between
// processes, CHAIN_BUSY between jobs of one mount, EBUSY through a control
// file — and afterwards every image checks clean and the first operation's
// result is what it would have been alone.

// concurrencyChain builds, in a fresh directory, base.qcow2 (16 MiB, 1 MiB of
// 0x11) under top.qcow2 (6 MiB of 0x5a, so that `commit -r 1M` takes about
// six seconds) and top2.qcow2 (another overlay of the same base), and
// other.qcow2, an unrelated image to rebase onto. It returns the directory
// and a pristine copy of it.
func concurrencyChain(t *testing.T) (dir, pristine string) {
	t.Helper()
	dir = t.TempDir()
	shellIn(t, dir, strings.Join([]string{
		"qemu-img create -q -f qcow2 base.qcow2 16M",
		"qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x11 8M 1M' base.qcow2 >/dev/null",
		"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 16M",
		"qemu-io -c 'write -P 0x5a 0 6M' top.qcow2 >/dev/null",
		"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top2.qcow2 16M",
		"qemu-io -c 'write -P 0x66 10M 64k' top2.qcow2 >/dev/null",
		"qemu-img create -q -f qcow2 other.qcow2 16M",
	}, " && "))
	pristine = t.TempDir()
	copyDir(t, dir, pristine)
	return dir, pristine
}

// checkCommitted checks dir after `commit top.qcow2` ran alone: every image
// checks clean, base.qcow2 reads what top.qcow2 read, and top.qcow2 still
// reads the same.
func checkCommitted(t *testing.T, dir, pristine string) {
	t.Helper()
	for _, img := range []string{"base.qcow2", "top.qcow2", "top2.qcow2", "other.qcow2"} {
		checkClean(t, filepath.Join(dir, img), false)
	}
	if r := compareImages(t, filepath.Join(pristine, "top.qcow2"), filepath.Join(dir, "base.qcow2")); r.code != 0 {
		t.Errorf("base.qcow2 does not read what top.qcow2 read: %s%s", r.stdout, r.stderr)
	}
	if r := compareImages(t, filepath.Join(pristine, "top.qcow2"), filepath.Join(dir, "top.qcow2")); r.code != 0 {
		t.Errorf("top.qcow2 reads differently after the commit: %s%s", r.stdout, r.stderr)
	}
}

// startCLI starts `instarfs OP ARGS…` in dir; wait returns its result.
func startCLI(t *testing.T, dir string, args ...string) (wait func() result) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"--allow-dir", dir}, args...)...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan result, 1)
	go func() {
		err := cmd.Wait()
		done <- resultOf(err, out.Bytes(), errb.Bytes())
	}()
	var r *result
	t.Cleanup(func() {
		if r == nil {
			cmd.Process.Kill()
			<-done
		}
	})
	return func() result {
		if r == nil {
			select {
			case got := <-done:
				r = &got
			case <-time.After(2 * time.Minute):
				t.Fatalf("instarfs %v did not finish", args)
			}
		}
		return *r
	}
}

// TestConcurrentCLI runs a second command while `commit -r 1M top.qcow2`
// writes base.qcow2: each is refused with IMAGE_IN_USE, and the commit
// completes as if alone.
func TestConcurrentCLI(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"rebase the same top", []string{"rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"}},
		{"safe rebase the same top", []string{"rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"}},
		{"commit the same top", []string{"commit", "top.qcow2"}},
		{"commit another overlay into the same base", []string{"commit", "top2.qcow2"}},
		{"rebase the base", []string{"rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "base.qcow2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir, pristine := concurrencyChain(t)
			before := hashDir(t, dir)
			wait := startCLI(t, dir, "commit", "-r", "1M", "top.qcow2")
			if !waitLocked(t, dir, "base.qcow2") {
				t.Fatalf("the commit never locked base.qcow2: %+v", wait())
			}
			r := runOp(t, dir, nil, tt.args[0], tt.args[1:]...)
			if r.code != 1 || errorCode(r.stderr) != "IMAGE_IN_USE" {
				t.Errorf("instarfs %v during the commit: exit %d, %s; want exit 1, IMAGE_IN_USE", tt.args, r.code, r.stderr)
			}
			first := wait()
			if first.code != 0 {
				t.Fatalf("the commit: exit %d, %s", first.code, first.stderr)
			}
			after := hashDir(t, dir)
			for _, img := range []string{"top2.qcow2", "other.qcow2"} {
				if before[img] != after[img] {
					t.Errorf("%s changed", img)
				}
			}
			checkCommitted(t, dir, pristine)
		})
	}
}

// TestConcurrentMountAndCLI runs a job through a control file while the
// command line commits, and the other way round.
func TestConcurrentMountAndCLI(t *testing.T) {
	t.Run("mount while the command line commits", func(t *testing.T) {
		dir, pristine := concurrencyChain(t)
		m := mount(t, dir, nil)
		wait := startCLI(t, dir, "commit", "-r", "1M", "top.qcow2")
		if !waitLocked(t, dir, "base.qcow2") {
			t.Fatalf("the commit never locked base.qcow2: %+v", wait())
		}
		for _, w := range []struct{ img, file, line string }{
			{"top.qcow2", "rebase", "-u -F qcow2 other.qcow2"},
			{"top.qcow2", "commit", ""},
			{"top2.qcow2", "commit", ""},
		} {
			r := m.shell(t, "echo "+w.line+" > "+w.img+"/"+w.file)
			if r.code == 0 || !bytes.Contains(r.stderr, []byte("Device or resource busy")) {
				t.Errorf("%s/%s during the commit: exit %d, %s; want EBUSY", w.img, w.file, r.code, r.stderr)
			}
			if code := resultCode(t, m, w.img); code != "IMAGE_IN_USE" {
				t.Errorf("%s/result.json: code %q, want IMAGE_IN_USE", w.img, code)
			}
		}
		if first := wait(); first.code != 0 {
			t.Fatalf("the commit: exit %d, %s", first.code, first.stderr)
		}
		checkCommitted(t, dir, pristine)
	})

	t.Run("command line while the mount commits", func(t *testing.T) {
		dir, pristine := concurrencyChain(t)
		m := mount(t, dir, nil)
		done := make(chan result, 1)
		go func() { done <- execIn(t, m.mnt, "bash", "-c", "echo -r 1M > top.qcow2/commit") }()
		waitRunning(t, m, "top.qcow2", "commit")
		for _, args := range [][]string{
			{"rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"},
			{"commit", "top.qcow2"},
			{"commit", "top2.qcow2"},
		} {
			r := runOp(t, dir, nil, args[0], args[1:]...)
			if r.code != 1 || errorCode(r.stderr) != "IMAGE_IN_USE" {
				t.Errorf("instarfs %v during the commit: exit %d, %s; want exit 1, IMAGE_IN_USE", args, r.code, r.stderr)
			}
		}
		select {
		case r := <-done:
			if r.code != 0 {
				t.Fatalf("the commit through the mount: exit %d, %s", r.code, r.stderr)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("the commit through the mount did not finish")
		}
		if s := m.read(t, "top.qcow2", "status"); s != "ok commit\n" {
			t.Errorf("status after the commit: %q", s)
		}
		checkCommitted(t, dir, pristine)
	})
}

// TestConcurrentMount writes two control files of one chain: the second job
// is refused with EBUSY (CHAIN_BUSY) while the first runs.
func TestConcurrentMount(t *testing.T) {
	dir, pristine := concurrencyChain(t)
	m := mount(t, dir, nil)
	done := make(chan result, 1)
	go func() { done <- execIn(t, m.mnt, "bash", "-c", "echo -r 1M > top.qcow2/commit") }()
	waitRunning(t, m, "top.qcow2", "commit")
	for _, w := range []struct{ img, file, line string }{
		{"top.qcow2", "rebase", "-u -F qcow2 other.qcow2"},
		{"top2.qcow2", "commit", ""},
		{"top2.qcow2", "rebase", "other.qcow2"},
		{"base.qcow2", "rebase", "-u -F qcow2 other.qcow2"},
	} {
		r := m.shell(t, "echo "+w.line+" > "+w.img+"/"+w.file)
		if r.code == 0 || !bytes.Contains(r.stderr, []byte("Device or resource busy")) {
			t.Errorf("%s/%s during the commit: exit %d, %s; want EBUSY", w.img, w.file, r.code, r.stderr)
		}
	}
	// A job on an image of the running job's chain is refused before it
	// starts (CHAIN_BUSY); one on another overlay of the same base meets
	// the base's lock, which the mount's own job holds (CHAIN_BUSY too).
	// Each refusal is recorded where it was written; base.qcow2's status
	// says which job uses it.
	if s := m.read(t, "base.qcow2", "status"); s != "busy: commit of top.qcow2\n" {
		t.Errorf("base.qcow2's status during the commit: %q", s)
	}
	for _, img := range []string{"base.qcow2", "top2.qcow2"} {
		if code := resultCode(t, m, img); code != "CHAIN_BUSY" {
			t.Errorf("%s/result.json: code %q, want CHAIN_BUSY", img, code)
		}
	}
	select {
	case r := <-done:
		if r.code != 0 {
			t.Fatalf("the commit through the mount: exit %d, %s", r.code, r.stderr)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the commit through the mount did not finish")
	}
	checkCommitted(t, dir, pristine)
}

// waitRunning waits until img's status says op is running.
func waitRunning(t *testing.T, m *mounted, img, op string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.HasPrefix(m.read(t, img, "status"), "running "+op) {
		if time.Now().After(deadline) {
			t.Fatalf("the %s did not start: status %q", op, m.read(t, img, "status"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// resultCode is the error code of img's result.json, "" when none.
func resultCode(t *testing.T, m *mounted, img string) string {
	t.Helper()
	var env struct{ Error map[string]string }
	if err := json.Unmarshal([]byte(m.read(t, img, "result.json")), &env); err != nil {
		t.Fatalf("%s/result.json: %v", img, err)
	}
	return strings.ToUpper(codeOf(env.Error))
}
