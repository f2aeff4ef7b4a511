package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests replay attacks from a directory under IMAGEDIR that an attacker
// can write to (an upload area): races that swap names for symlinks, special
// files where images are expected, and backing names the policy refuses.

// writeControl writes line to a control file of the mount in one write(2), as
// echo does, and returns the write's error.
func writeControl(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(line + "\n"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// exchange swaps two names atomically, as renameat2(RENAME_EXCHANGE) does.
func exchange(t *testing.T, a, b string) {
	t.Helper()
	if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("exchanging %s and %s: %v", a, b, err)
	}
}

// TestMountRenameExchangeRace swaps upload/y.qcow2 with a symlink to an image
// outside IMAGEDIR, over and over, while commit and rebase are written to
// y.qcow2's control files. The image outside, and its backing file, must come
// out byte for byte unchanged, and none of its data may reach IMAGEDIR.
func TestMountRenameExchangeRace(t *testing.T) {
	root := t.TempDir()
	images := filepath.Join(root, "images")
	upload := filepath.Join(images, "upload")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{upload, outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The victim's chain outside: secret.qcow2 over base.qcow2, 64 KiB of 0x5a.
	shellIn(t, outside, `qemu-img create -q -f qcow2 base.qcow2 1M &&
		qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 secret.qcow2 1M &&
		qemu-io -f qcow2 -c "write -q -P 0x5a 0 64k" secret.qcow2`)
	// The attacker's chain in the upload area, with the same backing name.
	shellIn(t, upload, `qemu-img create -q -f qcow2 base.qcow2 1M &&
		qemu-img create -q -f qcow2 other.qcow2 1M &&
		qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 y.qcow2 1M &&
		qemu-io -f qcow2 -c "write -q -P 0x11 0 64k" y.qcow2`)
	y, swap := filepath.Join(upload, "y.qcow2"), filepath.Join(upload, "swap")
	if err := os.Symlink(filepath.Join(outside, "secret.qcow2"), swap); err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, n := range []string{"secret.qcow2", "base.qcow2"} {
		b, err := os.ReadFile(filepath.Join(outside, n))
		if err != nil {
			t.Fatal(err)
		}
		before[n] = b
	}

	m := mount(t, images, nil)
	if _, err := os.Stat(m.path("upload", "y.qcow2", "commit")); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if unix.Renameat2(unix.AT_FDCWD, y, unix.AT_FDCWD, swap, unix.RENAME_EXCHANGE) == nil {
				swaps.Add(1)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	writes := []struct{ file, line string }{
		{"commit", ""},
		{"rebase", "-u -F qcow2 -b other.qcow2"},
		{"commit", "-d"},
		{"rebase", "-u -F qcow2 -b base.qcow2"},
	}
	outcomes := map[string]int{}
	deadline := time.Now().Add(8 * time.Second)
	for i := 0; i < 200 && time.Now().Before(deadline); i++ {
		for _, w := range writes {
			err := writeControl(m.path("upload", "y.qcow2", w.file), w.line)
			var errno syscall.Errno
			switch {
			case err == nil:
				outcomes["ok"]++
			case errors.As(err, &errno):
				outcomes[errno.Error()]++
			default:
				outcomes[err.Error()]++
			}
		}
	}
	close(stop)
	wg.Wait()
	if st, err := os.Lstat(y); err == nil && st.Mode()&os.ModeSymlink != 0 {
		exchange(t, y, swap)
	}
	t.Logf("%d swaps; outcomes of the writes: %v", swaps.Load(), outcomes)
	if swaps.Load() < 100 {
		t.Errorf("only %d swaps: the race was hardly run", swaps.Load())
	}
	for n, b := range before {
		after, err := os.ReadFile(filepath.Join(outside, n))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(after, b) {
			t.Errorf("outside/%s changed through the mount", n)
		}
	}
	secret := bytes.Repeat([]byte{0x5a}, 4096)
	for _, n := range []string{"base.qcow2", "other.qcow2", "y.qcow2"} {
		b, err := os.ReadFile(filepath.Join(upload, n))
		if err != nil || bytes.Contains(b, secret) {
			t.Errorf("upload/%s: the outside image's data reached IMAGEDIR (or it cannot be read: %v)", n, err)
		}
	}
}

// TestMountSubdirSwap swaps a subdirectory, after the mount looked it up, for a
// symlink to a 0700 directory outside IMAGEDIR: the mount must neither list
// it nor serve its images, before or after the kernel looks the name up again.
func TestMountSubdirSwap(t *testing.T) {
	root := t.TempDir()
	images := filepath.Join(root, "images")
	private := filepath.Join(root, "outside", "private")
	for _, d := range []string{filepath.Join(images, "pub"), private} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	shellIn(t, filepath.Join(images, "pub"), "qemu-img create -q -f qcow2 a.qcow2 1M")
	shellIn(t, private, "qemu-img create -q -f qcow2 p.qcow2 1M")
	link := filepath.Join(images, "link")
	if err := os.Symlink(private, link); err != nil {
		t.Fatal(err)
	}
	m := mount(t, images, nil)
	if got := names(t, m.path("pub")); strings.Join(got, " ") != "a.qcow2" {
		t.Fatalf("pub lists %v before the swap", got)
	}
	if _, err := os.ReadFile(m.path("pub", "a.qcow2", "info.json")); err != nil {
		t.Fatal(err)
	}
	exchange(t, filepath.Join(images, "pub"), link)
	check := func(when string) {
		des, err := os.ReadDir(m.path("pub"))
		for _, de := range des {
			if de.Name() == "p.qcow2" {
				t.Errorf("%s: pub lists the outside directory's p.qcow2", when)
			}
		}
		t.Logf("%s: listing pub: %d entries, %v", when, len(des), err)
		if _, err := os.Stat(m.path("pub", "p.qcow2")); err == nil {
			t.Errorf("%s: pub/p.qcow2 can be looked up", when)
		}
		if b, err := os.ReadFile(m.path("pub", "p.qcow2", "info.json")); err == nil {
			t.Errorf("%s: pub/p.qcow2/info.json serves the outside image:\n%s", when, b)
		}
		if b, err := os.ReadFile(m.path("pub", "a.qcow2", "info.json")); err == nil {
			t.Errorf("%s: pub/a.qcow2/info.json is served through a name that now leads outside:\n%s", when, b)
		}
	}
	check("right after the swap")
	time.Sleep(1500 * time.Millisecond) // past the entry and attribute timeouts
	check("after the kernel looked pub up again")
}

// specialFiles makes a FIFO, a socket and, where mknod is allowed, a
// character device (the numbers of /dev/null) named *.qcow2 in dir, and an
// overlay naming each as its qcow2 backing file. It returns the special files'
// names.
func specialFiles(t *testing.T, dir string) []string {
	t.Helper()
	specials := []string{"fifo.qcow2", "sock.qcow2"}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo.qcow2"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "sock.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := unix.Mknod(filepath.Join(dir, "null.qcow2"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err == nil {
		specials = append(specials, "null.qcow2")
	} else {
		t.Logf("mknod: %v; no device node", err)
	}
	script := "qemu-img create -q -f qcow2 good.qcow2 1M"
	for _, s := range specials {
		// -u: qemu-img does not open the backing file.
		script += " && qemu-img create -q -f qcow2 -u -b " + s + " -F qcow2 ov-" + s + " 1M"
	}
	shellIn(t, dir, script)
	return specials
}

// TestSpecialFilesCLI names FIFOs, sockets and devices as the image and as
// backing files: every command fails at once with NOT_REGULAR_FILE.
func TestSpecialFilesCLI(t *testing.T) {
	dir := t.TempDir()
	for _, s := range specialFiles(t, dir) {
		cases := []struct {
			args  []string
			limit time.Duration
		}{
			{[]string{"info", s}, time.Second},
			{[]string{"map", s}, time.Second},
			{[]string{"check", s}, time.Second},
			{[]string{"commit", s}, time.Second},
			{[]string{"rebase", "-u", "-F", "qcow2", "-b", "good.qcow2", s}, time.Second},
			{[]string{"info", "--backing-chain", "ov-" + s}, 5 * time.Second},
			{[]string{"map", "ov-" + s}, 5 * time.Second},
			{[]string{"commit", "ov-" + s}, 5 * time.Second},
			{[]string{"rebase", "-b", "good.qcow2", "ov-" + s}, 5 * time.Second},
			{[]string{"rebase", "-b", s, "good.qcow2"}, 5 * time.Second},
			{[]string{"rebase", "-u", "-F", "qcow2", "-b", s, "good.qcow2"}, 5 * time.Second},
		}
		for _, c := range cases {
			r := runBounded(t, dir, 20*time.Second, c.args...)
			switch {
			case r.timedOut:
				t.Errorf("instarfs %v blocked", c.args)
			case r.code == 0 || errorCode(r.stderr) != "NOT_REGULAR_FILE":
				t.Errorf("instarfs %v: exit %d, %s; want NOT_REGULAR_FILE", c.args, r.code, r.stderr)
			case r.dur > c.limit:
				t.Errorf("instarfs %v took %v (at most %v)", c.args, r.dur, c.limit)
			}
		}
	}
}

// TestSpecialFilesMount shows a directory with special files to the mount:
// they are hidden, the chains that name them fail at once, an image replaced
// by a FIFO after lookup serves nothing, and the mount still stops.
func TestSpecialFilesMount(t *testing.T) {
	dir := t.TempDir()
	specials := specialFiles(t, dir)
	shellIn(t, dir, "qemu-img create -q -f qcow2 top.qcow2 1M")
	if err := unix.Mkfifo(filepath.Join(dir, "later"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := mount(t, dir, nil)
	listed := strings.Join(names(t, m.mnt), " ")
	for _, s := range specials {
		if strings.Contains(" "+listed+" ", " "+s+" ") {
			t.Errorf("the mount lists %s: %s", s, listed)
		}
		if !strings.Contains(listed, "ov-"+s) {
			t.Errorf("the mount does not list ov-%s: %s", s, listed)
		}
	}
	// timeout -s KILL: a read blocked in the mount would be killed, and show.
	bounded := func(script string) result {
		start := time.Now()
		r := m.shell(t, "timeout -s KILL 10 "+script)
		if r.code == 137 || time.Since(start) > 5*time.Second {
			t.Errorf("%s blocked (%v)", script, time.Since(start))
		}
		return r
	}
	for _, s := range specials {
		for _, f := range []string{"chain.json", "map.json"} {
			if r := bounded("cat ov-" + s + "/" + f); r.code == 0 || !bytes.Contains(r.stderr, []byte("Operation not permitted")) {
				t.Errorf("cat ov-%s/%s: exit %d, %s; want EPERM", s, f, r.code, r.stderr)
			}
		}
		if r := bounded("bash -c 'echo > ov-" + s + "/commit'"); r.code == 0 || !bytes.Contains(r.stderr, []byte("Operation not permitted")) {
			t.Errorf("commit of ov-%s: exit %d, %s; want EPERM", s, r.code, r.stderr)
		}
		var env struct{ Error map[string]string }
		json.Unmarshal([]byte(m.read(t, "ov-"+s, "result.json")), &env)
		if env.Error["code"] != "NOT_REGULAR_FILE" {
			t.Errorf("ov-%s/result.json: %v, want NOT_REGULAR_FILE", s, env.Error)
		}
	}
	// The top replaced by a FIFO after the mount looked it up.
	if _, err := os.Stat(m.path("top.qcow2", "info.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "later"), filepath.Join(dir, "top.qcow2")); err != nil {
		t.Fatal(err)
	}
	for _, script := range []string{"cat top.qcow2/info.json", "cat top.qcow2/chain.json", "bash -c 'echo > top.qcow2/commit'", "ls top.qcow2"} {
		if r := bounded(script); r.code == 0 {
			t.Errorf("%s succeeded on a FIFO: %s", script, r.stdout)
		}
	}
}

// TestCLIRefusesWrittenNames checks that rebase never writes a backing name
// its own path policy would refuse to open, as the mount refuses them.
func TestCLIRefusesWrittenNames(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	shellIn(t, dir, "qemu-img create -q -f qcow2 x.qcow2 1M")
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "escape.img")); err != nil {
		t.Fatal(err)
	}
	pristine, err := os.ReadFile(filepath.Join(dir, "x.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	later := filepath.Join(other, "later.qcow2")
	tests := []struct {
		allowOther bool
		args       []string
		code       string // "" when the name is written
	}{
		{false, []string{"-u", "-F", "raw", "-b", `json:{"file.filename":"/etc/shadow"}`}, "BACKING_PROTOCOL_REFUSED"},
		{false, []string{"-u", "-F", "raw", "-b", "/etc/shadow"}, "BACKING_PATH_OUTSIDE_ROOT"},
		{false, []string{"-u", "-F", "qcow2", "-b", "nbd://localhost/x"}, "BACKING_PROTOCOL_REFUSED"},
		{false, []string{"-u", "-F", "qcow2", "-b", "../x.qcow2"}, "BACKING_PATH_OUTSIDE_ROOT"},
		{false, []string{"-u", "-F", "raw", "-b", "escape.img"}, "BACKING_PATH_OUTSIDE_ROOT"},
		{false, []string{"-u", "-F", "qcow2", "-b", later}, "BACKING_PATH_OUTSIDE_ROOT"},
		{true, []string{"-u", "-F", "qcow2", "-b", later}, ""},
		{false, []string{"-u", "-F", "qcow2", "-b", "not-yet.qcow2"}, ""},
	}
	for _, tt := range tests {
		if err := os.WriteFile(filepath.Join(dir, "x.qcow2"), pristine, 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"rebase"}
		if tt.allowOther {
			args = []string{"--allow-dir", other, "rebase"}
		}
		r := execIn(t, dir, binary, append(append(args, tt.args...), "x.qcow2")...)
		after, _ := os.ReadFile(filepath.Join(dir, "x.qcow2"))
		if tt.code != "" {
			if r.code == 0 || errorCode(r.stderr) != tt.code {
				t.Errorf("rebase %v: exit %d, %s; want %s", tt.args, r.code, r.stderr, tt.code)
			}
			if !bytes.Equal(after, pristine) {
				t.Errorf("rebase %v changed the image", tt.args)
			}
			continue
		}
		if r.code != 0 {
			t.Errorf("rebase %v: exit %d, %s", tt.args, r.code, r.stderr)
			continue
		}
		name := tt.args[len(tt.args)-1]
		if !bytes.Contains(after, []byte(name)) {
			t.Errorf("rebase %v did not write the name", tt.args)
		}
	}
}

// TestCLISignalsEndCommand interrupts a rate-limited commit: SIGINT and SIGTERM
// each end the command within a second, with CANCELLED, and leave both images
// consistent.
func TestCLISignalsEndCommand(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			shellIn(t, dir, `qemu-img create -q -f qcow2 base.qcow2 4M &&
				qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M &&
				qemu-io -f qcow2 -c "write -q -P 0x33 0 1M" top.qcow2`)
			cmd := exec.Command(binary, "commit", "-r", "64K", "top.qcow2")
			cmd.Dir = dir
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			time.Sleep(700 * time.Millisecond)
			select {
			case err := <-exited:
				t.Fatalf("the commit ended before the signal (%v): %s", err, errb.Bytes())
			default:
			}
			start := time.Now()
			cmd.Process.Signal(sig)
			select {
			case err := <-exited:
				r := resultOf(err, nil, errb.Bytes())
				if d := time.Since(start); d > time.Second {
					t.Errorf("%v ended the command after %v", sig, d)
				}
				if r.code != 1 || errorCode(r.stderr) != "CANCELLED" {
					t.Errorf("after %v: exit %d, %s; want CANCELLED", sig, r.code, r.stderr)
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
				t.Fatalf("%v did not end the command", sig)
			}
			checkClean(t, filepath.Join(dir, "base.qcow2"), true)
			checkClean(t, filepath.Join(dir, "top.qcow2"), true)
		})
	}
}
