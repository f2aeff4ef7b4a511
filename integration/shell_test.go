package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The control files as shells and runtimes really write them: commands split
// into several writes, signals that arrive while a write waits for its job,
// and runtimes that restart interrupted writes.

// TestMountShellForms writes rebase commands in every form a shell offers.
// The one-write forms run; the split forms and the lines without a target are
// refused with EINVAL before anything is written, and the refusal shows in
// status and result.json.
func TestMountShellForms(t *testing.T) {
	dir := demoCopy(t)
	m := mount(t, dir, nil)
	want := qemuContent(t, dir, "overlay.qcow2")
	backing := func() string {
		t.Helper()
		l, _ := os.Readlink(m.path("overlay.qcow2", "backing"))
		return l
	}
	for _, script := range []string{
		// Split into several writes: the first write alone must not run.
		`printf '%s\n' -u base.qcow2 > overlay.qcow2/rebase`,
		`printf '%s\n' -u -b base.qcow2 > overlay.qcow2/rebase`,
		`{ printf -- '-u -b '; printf base.qcow2; } > overlay.qcow2/rebase`,
		`{ printf -- '-u --backing='; printf base.qcow2; } > overlay.qcow2/rebase`,
		// bash's echo and printf write once per line.
		`printf -- '-u\n-F qcow2\nbase.qcow2\n' > overlay.qcow2/rebase`,
		`echo -e '-u\nbase.qcow2' > overlay.qcow2/rebase`,
		`{ echo -u; echo base.qcow2; } > overlay.qcow2/rebase`,
		`{ echo -F qcow2; echo -b base.qcow2; } > overlay.qcow2/rebase`,
		// No target: never a detach.
		`echo > overlay.qcow2/rebase`,
		`echo -u > overlay.qcow2/rebase`,
		`echo -F qcow2 > overlay.qcow2/rebase`,
		`echo -u -p -q > overlay.qcow2/rebase`,
		`echo '""' > overlay.qcow2/rebase`,
	} {
		r := m.shell(t, script)
		if r.code == 0 || !bytes.Contains(r.stderr, []byte("Invalid argument")) {
			t.Errorf("%s: exit %d, %s; want EINVAL", script, r.code, r.stderr)
		}
		if s := m.read(t, "overlay.qcow2", "status"); !strings.HasPrefix(s, "failed rebase: ") {
			t.Errorf("%s: status %q", script, s)
		}
		if code := resultCode(t, m, "overlay.qcow2"); code != "BAD_ARGUMENTS" {
			t.Errorf("%s: result.json code %q", script, code)
		}
		if l := backing(); l != "../base.qcow2" {
			t.Fatalf("%s: backing -> %q: the image was rebased or detached", script, l)
		}
	}
	if s := m.read(t, "overlay.qcow2", "status"); !strings.Contains(s, `-b "" to detach`) {
		t.Errorf("the refusal does not show the full form: %q", s)
	}
	// A later write on one open is refused and recorded, even when the first
	// ran as a command of its own.
	if r := m.shell(t, `printf '%s %s\n' -b new-base.qcow2 -F qcow2 -u > overlay.qcow2/rebase`); r.code == 0 {
		t.Errorf("a split safe rebase followed by -u: exit 0")
	}
	if s := m.read(t, "overlay.qcow2", "status"); !strings.Contains(s, "second write") || !strings.Contains(s, "ran as the whole command") {
		t.Errorf("status after a second write: %q", s)
	}
	if got := qemuContent(t, dir, "overlay.qcow2"); !bytes.Equal(got, want) {
		t.Fatalf("guest content changed by refused or split commands")
	}

	// The forms that write once run, whatever they name.
	for _, f := range []struct{ script, backing string }{
		{`echo -u -F qcow2 base.qcow2 > overlay.qcow2/rebase`, "../base.qcow2"},
		{`printf -- '-u -F qcow2 -b new-base.qcow2' > overlay.qcow2/rebase`, "../new-base.qcow2"},
		{`printf '%s' '-u -b ' base.qcow2 > overlay.qcow2/rebase`, "../base.qcow2"},
		{`/usr/bin/printf -- '-u\n-F qcow2\nnew-base.qcow2\n' > overlay.qcow2/rebase`, "../new-base.qcow2"},
		{`printf '%s %s %s\n' -u -b new-base.qcow2 > overlay.qcow2/rebase`, "../new-base.qcow2"},
		{`cat <<< '-u -b base.qcow2' > overlay.qcow2/rebase`, "../base.qcow2"},
		{"cat > overlay.qcow2/rebase <<EOF\n-u -b new-base.qcow2\nEOF", "../new-base.qcow2"},
		{`echo -u -b base.qcow2 | tee overlay.qcow2/rebase > /dev/null`, "../base.qcow2"},
	} {
		if r := m.shell(t, f.script); r.code != 0 {
			t.Errorf("%s: exit %d, %s", f.script, r.code, r.stderr)
		}
		if l := backing(); l != f.backing {
			t.Errorf("%s: backing -> %q, want %q", f.script, l, f.backing)
		}
	}
	// Detaching is spelled out; a safe detach keeps the content.
	if r := m.shell(t, `echo '-b ""' > overlay.qcow2/rebase`); r.code != 0 {
		t.Fatalf(`-b "": exit %d, %s`, r.code, r.stderr)
	}
	if l := backing(); l != "" {
		t.Errorf(`backing -> %q after -b ""`, l)
	}
	if got := qemuContent(t, dir, "overlay.qcow2"); !bytes.Equal(got, want) {
		t.Errorf("guest content changed by the detach")
	}
}

// signalMount builds the concurrency chain (a commit -r 2M of top.qcow2 takes
// about three seconds) and mounts it.
func signalMount(t *testing.T) (m *mounted, pristine string) {
	t.Helper()
	dir, pristine := concurrencyChain(t)
	return mount(t, dir, nil), pristine
}

// TestMountSignals sends the signals a shell or runtime really gets to a
// writer waiting for a long commit: only a terminating one cancels it. The
// cases run in parallel, each on its own mount: the commits mostly sleep.
func TestMountSignals(t *testing.T) {
	const commit = "-b base.qcow2 -r 2M"
	// Signals that must not cancel: the commit completes and the write
	// succeeds.
	for _, tt := range []struct{ name, script string }{
		{"background child", "sleep 0.5 & echo " + commit + " > top.qcow2/commit"},
		{"WINCH trap", `trap 'echo winch >&2' WINCH; (sleep 0.5; kill -WINCH $$; sleep 0.5; kill -WINCH $$) & echo ` + commit + ` > top.qcow2/commit; wait`},
		{"WINCH untrapped", `(sleep 0.5; kill -WINCH $$) & echo ` + commit + ` > top.qcow2/commit`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, pristine := signalMount(t)
			start := time.Now()
			if r := m.shell(t, tt.script); r.code != 0 {
				t.Fatalf("exit %d, %s; status %q", r.code, r.stderr, m.read(t, "top.qcow2", "status"))
			}
			if d := time.Since(start); d < 2*time.Second {
				t.Errorf("the write returned after %v, before a 3 s commit could end", d)
			}
			if s := m.read(t, "top.qcow2", "status"); s != "ok commit\n" {
				t.Errorf("status %q", s)
			}
			checkCommitted(t, m.dir, pristine)
		})
	}

	t.Run("python SA_RESTART", func(t *testing.T) {
		t.Parallel()
		m, pristine := signalMount(t)
		r := execIn(t, m.mnt, "python3", "-c", pyWriter, "top.qcow2/commit", commit, "restart")
		if r.code != 0 || !bytes.HasPrefix(r.stdout, []byte(fmt.Sprintf("wrote %d ", len(commit)))) {
			t.Fatalf("exit %d, %s%s", r.code, r.stdout, r.stderr)
		}
		if !bytes.Contains(r.stdout, []byte("handled ALRM USR1")) {
			t.Errorf("the handlers did not run: %s", r.stdout)
		}
		if s := m.read(t, "top.qcow2", "status"); s != "ok commit\n" {
			t.Errorf("status %q", s)
		}
		checkCommitted(t, m.dir, pristine)
	})

	// Terminating signals cancel at a crash-safe point: the images check
	// clean and top.qcow2 reads what it read.
	cancelled := func(t *testing.T, m *mounted, pristine string) {
		t.Helper()
		if s := m.read(t, "top.qcow2", "status"); !strings.HasPrefix(s, "failed commit") {
			t.Errorf("status %q", s)
		}
		if code := resultCode(t, m, "top.qcow2"); code != "CANCELLED" {
			t.Errorf("result.json code %q", code)
		}
		for _, img := range []string{"top.qcow2", "base.qcow2"} {
			checkClean(t, filepath.Join(m.dir, img), true)
		}
		if r := compareImages(t, filepath.Join(pristine, "top.qcow2"), filepath.Join(m.dir, "top.qcow2")); r.code != 0 {
			t.Errorf("top.qcow2 reads differently after the cancelled commit: %s%s", r.stdout, r.stderr)
		}
	}
	t.Run("timeout -s INT", func(t *testing.T) {
		t.Parallel()
		m, pristine := signalMount(t)
		start := time.Now()
		r := execIn(t, m.mnt, "timeout", "-s", "INT", "0.7", "bash", "-c", "echo "+commit+" > top.qcow2/commit")
		if r.code != 124 || time.Since(start) > 2500*time.Millisecond {
			t.Errorf("exit %d after %v, %s; want 124 soon after the signal", r.code, time.Since(start), r.stderr)
		}
		cancelled(t, m, pristine)
	})
	t.Run("python SIGTERM handler", func(t *testing.T) {
		t.Parallel()
		// Python restarts the write after EINTR (PEP 475): the restarted
		// write re-attaches to the cancelled job and ends with ECANCELED.
		m, pristine := signalMount(t)
		r := execIn(t, m.mnt, "python3", "-c", pyWriter, "top.qcow2/commit", commit, "term")
		if !bytes.Contains(r.stdout, []byte("errno 125")) || !bytes.Contains(r.stdout, []byte("handled TERM")) {
			t.Errorf("exit %d, %s%s; want ECANCELED after the handler", r.code, r.stdout, r.stderr)
		}
		cancelled(t, m, pristine)
	})
	t.Run("interactive Ctrl-C", func(t *testing.T) {
		t.Parallel()
		m, pristine := signalMount(t)
		// A 6 s commit; the prompt comes back soon after Ctrl-C.
		r := execIn(t, m.mnt, "python3", "-c", pyInteractive, "echo -b base.qcow2 -r 1M > top.qcow2/commit", "top.qcow2/status")
		var after float64
		if _, err := fmt.Sscanf(string(r.stdout), "prompt after %g", &after); err != nil || after > 2 {
			t.Errorf("exit %d, %s%s: want the prompt back within 2 s", r.code, r.stdout, r.stderr)
		}
		cancelled(t, m, pristine)
	})
}

// pyWriter writes argv[2] to argv[1] in one write while signals arrive. Mode
// "restart": SIGALRM every 0.3 s and a SIGUSR1, with SA_RESTART handlers.
// Mode "term": a SIGTERM whose handler returns, so Python restarts the write.
const pyWriter = `
import os, signal, sys, time
path, line, mode = sys.argv[1:4]
handled = set()
def handler(sig, frame):
    handled.add(signal.Signals(sig).name[3:])
if mode == "restart":
    for s in (signal.SIGALRM, signal.SIGUSR1):
        signal.signal(s, handler)
        signal.siginterrupt(s, False)
    signal.setitimer(signal.ITIMER_REAL, 0.3, 0.3)
    sig = signal.SIGUSR1
else:
    signal.signal(signal.SIGTERM, handler)
    sig = signal.SIGTERM
pid = os.getpid()
if os.fork() == 0:
    time.sleep(0.8)
    os.kill(pid, sig)
    os._exit(0)
fd = os.open(path, os.O_WRONLY)
try:
    n = os.write(fd, line.encode())
    print("wrote", n, end=" ")
except OSError as e:
    print("errno", e.errno, end=" ")
signal.setitimer(signal.ITIMER_REAL, 0)
os.wait()
print("handled", " ".join(sorted(handled)))
`

// pyInteractive runs argv[1] in an interactive bash on a terminal, presses
// Ctrl-C once argv[2] (a status file) says the job runs, and prints how long
// the prompt took to come back, then what the terminal showed.
const pyInteractive = `
import os, pty, select, sys, time
cmd, status = sys.argv[1:3]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
out = b""
def drain(t):
    global out
    end = time.time() + t
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                return
drain(0.5)
os.write(fd, cmd.encode() + b"\n")
end = time.time() + 15
while not open(status).read().startswith("running") and time.time() < end:
    drain(0.05)
drain(0.3)
os.write(fd, b"\x03")
start, n = time.time(), len(out)
while b"bash-" not in out[n:] and time.time() < start + 15:
    drain(0.05)
print("prompt after %.2f s" % (time.time() - start))
os.write(fd, b"exit\n")
drain(0.3)
sys.stdout.write(out.decode(errors="replace"))
`

// TestMountOutcomes checks that every outcome shows: the images a job uses
// say so, a refusal on a busy chain is recorded where it was written, JSON
// files of the busy chain answer without EBUSY, and status and result.json
// take the time they changed as mtime.
func TestMountOutcomes(t *testing.T) {
	m, _ := signalMount(t)
	ref := filepath.Join(t.TempDir(), "ref")
	if err := os.WriteFile(ref, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	old, err := os.Stat(m.path("base.qcow2", "status"))
	if err != nil {
		t.Fatal(err)
	}
	m.read(t, "base.qcow2", "info.json") // answered before the job: the last answer during it
	time.Sleep(20 * time.Millisecond)

	done := make(chan result, 1)
	go func() { done <- m.shell(t, "echo -b base.qcow2 -r 2M > top.qcow2/commit") }()
	waitRunning(t, m, "top.qcow2", "commit")
	if s := m.read(t, "base.qcow2", "status"); s != "busy: commit of top.qcow2\n" {
		t.Errorf("base.qcow2/status during the commit: %q", s)
	}
	if st, err := os.Stat(m.path("base.qcow2", "status")); err != nil || !st.ModTime().After(old.ModTime()) {
		t.Errorf("base.qcow2/status mtime did not move when the job started: %v", err)
	}
	// JSON files of the busy chain: the last answer, or a wait; never EBUSY.
	for _, f := range []string{"base.qcow2/info.json", "top2.qcow2/info.json", "top2.qcow2/chain.json"} {
		if r := m.shell(t, "cat "+f+" > /dev/null"); r.code != 0 {
			t.Errorf("reading %s during the commit: exit %d, %s", f, r.code, r.stderr)
		}
	}
	if r := <-done; r.code != 0 {
		t.Fatalf("the commit: exit %d, %s", r.code, r.stderr)
	}
	go func() { done <- m.shell(t, "echo -b base.qcow2 -r 2M > top.qcow2/commit") }()
	waitRunning(t, m, "top.qcow2", "commit")
	// Refusals on the busy chain are recorded in the image written to.
	for _, w := range []struct{ img, file, line string }{
		{"base.qcow2", "rebase", "-u -b other.qcow2"},
		{"top2.qcow2", "commit", ""},
	} {
		if r := m.shell(t, "echo "+w.line+" > "+w.img+"/"+w.file); r.code == 0 || !bytes.Contains(r.stderr, []byte("Device or resource busy")) {
			t.Errorf("%s/%s: exit %d, %s", w.img, w.file, r.code, r.stderr)
		}
		if code := resultCode(t, m, w.img); code != "CHAIN_BUSY" {
			t.Errorf("%s/result.json: code %q, want CHAIN_BUSY", w.img, code)
		}
	}
	if r := <-done; r.code != 0 {
		t.Fatalf("the second commit: exit %d, %s", r.code, r.stderr)
	}
	if s := m.read(t, "base.qcow2", "status"); !strings.HasPrefix(s, "failed rebase: CHAIN_BUSY: commit of 'top.qcow2' is running") {
		t.Errorf("base.qcow2/status after the commit: %q", s)
	}
	// find -newer sees what changed: status and result.json of the images
	// written to; not the files of an image nothing happened to.
	r := execIn(t, m.mnt, "find", ".", "-newer", ref, "(", "-name", "status", "-o", "-name", "result.json", ")")
	got := strings.Fields(string(r.stdout))
	for _, want := range []string{"./top.qcow2/status", "./top.qcow2/result.json", "./base.qcow2/result.json", "./top2.qcow2/result.json"} {
		if !contains(got, want) {
			t.Errorf("find -newer: %q missing from %q", want, got)
		}
	}
	if contains(got, "./other.qcow2/status") {
		t.Errorf("find -newer lists other.qcow2/status: %q", got)
	}
	st, _ := os.Stat(m.path("top.qcow2", "result.json"))
	if d := time.Since(st.ModTime()); d < 0 || d > time.Minute {
		t.Errorf("result.json mtime %v is not the time of the result", st.ModTime())
	}
	// Reading the JSON files of the busy chain left none of its images open
	// (nor locked): top2.qcow2 can be committed now.
	if r := m.shell(t, "echo > top2.qcow2/commit"); r.code != 0 {
		t.Errorf("commit of top2.qcow2 after the jobs: exit %d, %s; status %q", r.code, r.stderr, m.read(t, "top2.qcow2", "status"))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestMountLookupSignals: a lookup that waits for a worker (here for the one
// slot of --workers 1, held by a commit) is interrupted when its caller gets
// any signal, the Go runtime's preemption signal included. Only a
// terminating signal may cancel it; otherwise the image must still be found.
func TestMountLookupSignals(t *testing.T) {
	dir, _ := concurrencyChain(t)
	m := mount(t, dir, nil, "--workers", "1")
	// The commit holds the slot; other.qcow2, new to the mount, is then
	// looked up by python while a SIGALRM handler runs every 0.2 s.
	script := `qemu-img create -q -f qcow2 ` + filepath.Join(dir, "other.qcow2") + ` 1M
echo -b base.qcow2 -r 2M > top.qcow2/commit &
cd / && python3 -I -c '
import os, signal, stat, sys, time
mnt = sys.argv[1]
deadline = time.monotonic() + 30
while not open(mnt + "/top.qcow2/status").read().startswith("running"):
    if time.monotonic() > deadline:
        sys.exit("the commit never ran")
    time.sleep(0.02)
n = 0
def handler(sig, frame):
    global n
    n += 1
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
st = os.stat(mnt + "/other.qcow2")
signal.setitimer(signal.ITIMER_REAL, 0)
print("directory" if stat.S_ISDIR(st.st_mode) else "not a directory", n, "signals")
' ` + m.mnt + `; wait`
	r := m.shell(t, script)
	if r.code != 0 || !bytes.Contains(r.stdout, []byte("directory")) || bytes.Contains(r.stdout, []byte(" 0 signals")) {
		t.Errorf("exit %d, %s%s: other.qcow2 must be found after the signals\nmount log:\n%s", r.code, r.stdout, r.stderr, m.stderr)
	}
}
