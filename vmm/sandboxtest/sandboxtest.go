// Package sandboxtest is the conformance suite of vmm.Sandbox backends: Run
// checks, through the Sandbox interface alone, that a backend ends every run
// as the outcome table of ARCHITECTURE.md says, delivers progress, hands the
// worker its image descriptors read-only or writable as the request says,
// serves sessions, and confines every worker.
//
// A backend's tests call Run with a sandbox whose worker serves the operations
// of package testworker; see there how a test binary becomes that worker. The
// jail's tests are an example:
//
//	func TestConformance(t *testing.T) {
//		sandboxtest.Run(t, jail.New(), sandboxtest.Options{Unstartable: ...})
//	}
//
// The confinement checks run the probes of `instarfs sandbox-check`
// (jail.SandboxCheck) through the backend, so a backend's worker must serve
// proto.OpSandboxProbe with jail.RunProbes and proto.OpSandboxViolate with
// jail.Violate, as the product worker and the test worker do, and must load
// its system-call filter in errno mode for the probe run.
package sandboxtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/jail"
	"instarfs/vmm/sandboxtest/testworker"
)

// Options say what Run may expect of a backend.
type Options struct {
	// Unconfined marks a sandbox that does not confine its worker (the
	// jail's Plain, for tests): the checks of confinement are skipped.
	Unconfined bool
	// Unstartable is a sandbox of the same backend that cannot start its
	// worker (a missing executable or guest kernel); Run checks that it fails
	// with SANDBOX_UNAVAILABLE. Nil skips that check.
	Unstartable vmm.Sandbox
	// Parallel runs the independent checks side by side (as many as go
	// test's -parallel allows), for a backend whose every run boots a
	// virtual machine.
	Parallel bool
	// Boot is how much longer than a process the backend may take to start
	// a worker (a virtual machine's boot, emulated on a loaded host): it is
	// added to the job timeouts and to the bounds on how long a run takes.
	Boot time.Duration
}

// Bounds of the suite, before Options.Boot is added: the job timeout of runs
// that are not about timeouts, and how long a run that the host must end
// early may take at most.
const (
	baseTimeout = 60 * time.Second
	baseSlow    = 20 * time.Second
)

// The bounds of the running suite (Run is not run concurrently).
var timeout, slow time.Duration

// Run runs the conformance suite against sb as subtests of t.
func Run(t *testing.T, sb vmm.Sandbox, opt Options) {
	timeout, slow = baseTimeout+opt.Boot, baseSlow+opt.Boot
	parallel := func(t *testing.T) {
		if opt.Parallel {
			t.Parallel()
		}
	}
	run := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			parallel(t)
			f(t)
		})
	}
	run("Outcomes", func(t *testing.T) { testOutcomes(t, sb, opt, parallel) })
	run("Cancel", func(t *testing.T) { testCancel(t, sb) })
	run("Deadline", func(t *testing.T) { testDeadline(t, sb) })
	run("Progress", func(t *testing.T) { testProgress(t, sb) })
	run("Unstartable", func(t *testing.T) {
		if opt.Unstartable == nil {
			t.Skip("no unstartable sandbox given")
		}
		_, err := opt.Unstartable.Run(context.Background(), job(testworker.OpEcho))
		if errcode.Of(err) != errcode.SandboxUnavailable {
			t.Fatalf("error %v, want SANDBOX_UNAVAILABLE", err)
		}
	})
	run("Images", func(t *testing.T) { testImages(t, sb) })
	run("Cut", func(t *testing.T) { testCut(t, sb) })
	run("Concurrent", func(t *testing.T) { testConcurrent(t, sb) })
	run("Stress", func(t *testing.T) {
		j := job(testworker.OpStress)
		j.Request.Images = []proto.ImageRef{{Name: "ro.img"}, {Name: "rw.img", Writable: true}}
		j.Files = Scratch(t, j.Request.Images)
		if _, err := sb.Run(context.Background(), j); err != nil {
			t.Fatal(err)
		}
	})
	run("Session", func(t *testing.T) { testSession(t, sb, opt, parallel) })
	run("Confined", func(t *testing.T) {
		if opt.Unconfined {
			t.Skip("the sandbox does not confine its worker")
		}
		testConfined(t, sb)
	})
}

func job(op string) vmm.Job {
	return vmm.Job{Request: proto.Request{Op: op}, Timeout: timeout}
}

// testOutcomes runs each way a worker can end and checks the error it maps to.
func testOutcomes(t *testing.T, sb vmm.Sandbox, opt Options, parallel func(*testing.T)) {
	tests := []struct {
		op       string
		timeout  time.Duration
		confined bool         // only a confining sandbox gives this outcome
		code     errcode.Code // "" for a result
		messages []string     // substrings of the error message
		own      bool         // the error is the worker's own, as it sent it
	}{
		{op: proto.OpNoop},
		{op: testworker.OpError, code: errcode.Qcow2Corrupt, own: true},
		{op: testworker.OpCrash, code: errcode.WorkerCrashed, messages: []string{"without a result", "panic: " + testworker.CrashMessage}},
		{op: testworker.OpExit, code: errcode.WorkerCrashed, messages: []string{"exited with status 3 without a result", testworker.ExitMessage}},
		{op: testworker.OpResultThenExit, code: errcode.WorkerCrashed, messages: []string{"exited with status 2 after writing its result"}},
		{op: testworker.OpSleep, timeout: 300 * time.Millisecond, code: errcode.WorkerTimeout, messages: []string{"300ms"}},
		{op: testworker.OpGarbage, code: errcode.WorkerProtocol, messages: []string{"not a protocol message"}},
		{op: testworker.OpHuge, code: errcode.WorkerProtocol, messages: []string{fmt.Sprintf("more than %d bytes", proto.MaxResultBytes)}},
		{op: testworker.OpTwoResults, code: errcode.WorkerProtocol, messages: []string{"follows the final line"}},
		{op: testworker.OpUnknownField, code: errcode.WorkerProtocol, messages: []string{"unknown field"}},
		{op: testworker.OpNoNewline, code: errcode.WorkerProtocol, messages: []string{"newline"}},
		{op: testworker.OpForbidden, confined: true, code: errcode.SandboxViolation},
		{op: proto.OpSandboxViolate, confined: true, code: errcode.SandboxViolation},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			parallel(t)
			if tt.confined && opt.Unconfined {
				t.Skip("the sandbox does not confine its worker")
			}
			j := job(tt.op)
			if tt.timeout > 0 {
				j.Timeout = tt.timeout
			}
			start := time.Now()
			res, err := sb.Run(context.Background(), j)
			if d := time.Since(start); d > slow {
				t.Errorf("the run took %v", d)
			}
			if tt.code == "" {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if string(res) != "{}" {
					t.Fatalf("result %s, want {}", res)
				}
				return
			}
			if err == nil {
				t.Fatalf("Run succeeded with %s, want %s", res, tt.code)
			}
			if got := errcode.Of(err); got != tt.code {
				t.Fatalf("error %s: %v; want %s", got, err, tt.code)
			}
			for _, m := range tt.messages {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
			var e *errcode.Error
			if tt.own && (!errors.As(err, &e) || e.Message != testworker.ErrorMessage) {
				t.Errorf("error %#v, want the worker's own error", err)
			}
		})
	}
}

// testCancel cancels a running worker, and runs one with a cancelled context.
func testCancel(t *testing.T, sb vmm.Sandbox) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	j := job(testworker.OpSleep)
	var started time.Time
	j.Progress = func(float64) {
		started = time.Now()
		cancel()
	}
	_, err := sb.Run(ctx, j)
	if errcode.Of(err) != errcode.Cancelled {
		t.Fatalf("error %v, want CANCELLED", err)
	}
	if started.IsZero() {
		t.Fatal("cancelled before the worker reported progress")
	}
	if d := time.Since(started); d > 5*time.Second {
		t.Errorf("the run ended %v after its context was cancelled", d)
	}
	if _, err := sb.Run(ctx, job(proto.OpNoop)); errcode.Of(err) != errcode.Cancelled {
		t.Errorf("run with a cancelled context: %v, want CANCELLED", err)
	}
}

// testDeadline runs a worker past its context's deadline, and one with a
// deadline that has passed already.
func testDeadline(t *testing.T, sb vmm.Sandbox) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := sb.Run(ctx, job(testworker.OpSleep))
	if errcode.Of(err) != errcode.WorkerTimeout {
		t.Fatalf("error %v, want WORKER_TIMEOUT", err)
	}
	if d := time.Since(start); d > slow {
		t.Errorf("the run took %v", d)
	}
	if _, err := sb.Run(ctx, job(proto.OpNoop)); errcode.Of(err) != errcode.WorkerTimeout {
		t.Errorf("run after the deadline: %v, want WORKER_TIMEOUT", err)
	}
}

// testProgress: a job's progress arrives in order, which the worker sends
// only when the backend's request asks for it.
func testProgress(t *testing.T, sb vmm.Sandbox) {
	var got []float64
	j := job(testworker.OpProgress)
	j.Progress = func(p float64) { got = append(got, p) }
	res, err := sb.Run(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	if string(res) != `"done"` {
		t.Errorf("result %s, want \"done\"", res)
	}
	if want := []float64{0.25, 0.5, 1}; !slices.Equal(got, want) {
		t.Errorf("progress %v, want %v", got, want)
	}
}

// testImages hands the worker read-only and writable images and checks what it
// found and what its writes did: descriptors in request order, a write to a
// read-only one refused with EBADF inside, a write to a writable one visible
// to the host afterwards.
func testImages(t *testing.T, sb vmm.Sandbox) {
	j := job(testworker.OpEcho)
	j.Request.Images = []proto.ImageRef{
		{Name: "a.qcow2", Format: "qcow2"},
		{Name: "b.raw", Format: "raw", Writable: true},
		{Name: "c.vmdk"},
	}
	j.Request.Args = json.RawMessage(`{"backing":"dir/ünïcode\u2028name","n":[1,2.5,null]}`)
	j.Files = Scratch(t, j.Request.Images)
	before := contents(t, j.Files)
	res, err := sb.Run(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	var echo testworker.EchoResult
	if err := json.Unmarshal(res, &echo); err != nil {
		t.Fatalf("decoding %s: %v", res, err)
	}
	var args bytes.Buffer
	json.Compact(&args, j.Request.Args)
	// A backend may tell the worker each image's length (ImageRef.Size; the
	// microvm's drives are block devices of whole sectors): the true one.
	for i, im := range echo.Request.Images {
		if im.Size != 0 && im.Size != scratchSize {
			t.Errorf("the worker was told image %d is %d bytes long, want %d", i, im.Size, scratchSize)
		}
		echo.Request.Images[i].Size = 0
	}
	if echo.Request.Op != j.Request.Op || !slices.Equal(echo.Request.Images, j.Request.Images) ||
		!bytes.Equal(echo.Request.Args, args.Bytes()) {
		t.Errorf("the worker received %+v (args %s), want %+v (args %s)",
			echo.Request, echo.Request.Args, j.Request, args.Bytes())
	}
	if len(echo.Images) != len(j.Files) {
		t.Fatalf("the worker saw %d images, want %d", len(echo.Images), len(j.Files))
	}
	after := contents(t, j.Files)
	for i, im := range j.Request.Images {
		if want := string(before[i][:testworker.EchoHead]); echo.Images[i].Head != want {
			t.Errorf("image %d (%s) starts with %q in the worker, want %q", i, im.Name, echo.Images[i].Head, want)
		}
		want := slices.Clone(before[i])
		if im.Writable {
			copy(want[testworker.EchoOffset:], testworker.EchoMark)
			if e := echo.Images[i].WriteErrno; e != "" {
				t.Errorf("writing writable image %s failed with %s", im.Name, e)
			}
		} else if e := echo.Images[i].WriteErrno; e != "EBADF" {
			t.Errorf("writing read-only image %s: %q, want EBADF", im.Name, e)
		}
		if !bytes.Equal(after[i], want) {
			t.Errorf("image %s after the run does not hold what the worker wrote (writable %t)", im.Name, im.Writable)
		}
	}
}

// testCut has the worker ask the host to shorten images (proto.Cut): a
// backend that offers it cuts a writable image once and refuses the rest.
func testCut(t *testing.T, sb vmm.Sandbox) {
	tests := []struct {
		name string
		cuts string
		code errcode.Code // "" for a result
		want []int64      // the images' lengths after the run
	}{
		{"shorten", `[{"image":1,"length":1000}]`, "", []int64{scratchSize, 1000}},
		{"to nothing", `[{"image":1,"length":0}]`, "", []int64{scratchSize, 0}},
		{"same length", `[{"image":1,"length":` + strconv.Itoa(scratchSize) + `}]`, "", []int64{scratchSize, scratchSize}},
		{"longer", `[{"image":1,"length":` + strconv.Itoa(scratchSize+1) + `}]`, errcode.WorkerProtocol, []int64{scratchSize, scratchSize}},
		{"negative", `[{"image":1,"length":-1}]`, errcode.WorkerProtocol, []int64{scratchSize, scratchSize}},
		{"read-only", `[{"image":0,"length":1000}]`, errcode.WorkerProtocol, []int64{scratchSize, scratchSize}},
		{"not handed", `[{"image":2,"length":1000}]`, errcode.WorkerProtocol, []int64{scratchSize, scratchSize}},
		{"twice", `[{"image":1,"length":2000},{"image":1,"length":1000}]`, errcode.WorkerProtocol, []int64{scratchSize, 2000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := job(testworker.OpCut)
			j.Request.Images = []proto.ImageRef{{Name: "ro.img"}, {Name: "rw.img", Writable: true}}
			j.Request.Args = json.RawMessage(tt.cuts)
			j.Files = Scratch(t, j.Request.Images)
			res, err := sb.Run(context.Background(), j)
			if err == nil && string(res) == `"not offered"` {
				t.Skip("the backend does not take cut lines")
			}
			switch {
			case tt.code == "" && (err != nil || string(res) != `"cut"`):
				t.Fatalf("result %s, error %v; want the result \"cut\"", res, err)
			case tt.code != "" && errcode.Of(err) != tt.code:
				t.Fatalf("result %s, error %v; want %s", res, err, tt.code)
			}
			for i, f := range j.Files {
				st, err := f.Stat()
				if err != nil {
					t.Fatal(err)
				}
				if st.Size() != tt.want[i] {
					t.Errorf("%s is %d bytes long after the run, want %d", j.Request.Images[i].Name, st.Size(), tt.want[i])
				}
			}
		})
	}
}

// testConcurrent runs workers side by side through one sandbox: each gets its
// own request.
func testConcurrent(t *testing.T, sb vmm.Sandbox) {
	const n = 3
	type answer struct {
		i   int
		res json.RawMessage
		err error
	}
	answers := make(chan answer, n)
	for i := range n {
		go func() {
			j := job(testworker.OpEcho)
			j.Request.Args = json.RawMessage(fmt.Sprintf(`{"worker":%d}`, i))
			res, err := sb.Run(context.Background(), j)
			answers <- answer{i, res, err}
		}()
	}
	for range n {
		a := <-answers
		if a.err != nil {
			t.Errorf("worker %d: %v", a.i, a.err)
			continue
		}
		var echo testworker.EchoResult
		if err := json.Unmarshal(a.res, &echo); err != nil {
			t.Errorf("worker %d: decoding %s: %v", a.i, a.res, err)
		} else if want := fmt.Sprintf(`{"worker":%d}`, a.i); string(echo.Request.Args) != want {
			t.Errorf("worker %d received %s, want %s", a.i, echo.Request.Args, want)
		}
	}
}

// testSession starts sessions (Sandbox.Start) and checks their calls, the
// worker's error frames, and how a session ends: the worker's exit, its
// life's end, a forbidden call, a cancelled start, a failed start.
func testSession(t *testing.T, sb vmm.Sandbox, opt Options, parallel func(*testing.T)) {
	start := func(t *testing.T, life time.Duration) *vmm.Session {
		t.Helper()
		j := job(testworker.OpSession)
		j.Timeout, j.Shared = life, 64
		s, err := sb.Start(context.Background(), j)
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		if string(s.Ready) != `"ready"` {
			t.Fatalf("ready document %s, want \"ready\"", s.Ready)
		}
		return s
	}
	call := func(s *vmm.Session, req string) (string, error) {
		reply := make([]byte, 64)
		n, err := s.Call(context.Background(), []byte(req), reply)
		return string(reply[:n]), err
	}
	t.Run("Calls", func(t *testing.T) {
		parallel(t)
		s := start(t, timeout)
		for _, tt := range []struct{ req, want string }{
			{testworker.FrameEcho + "one", "one"},
			{testworker.FrameShared + "10", strings.Repeat("y", 10)},
			{testworker.FrameEcho + "two", "two"},
		} {
			if got, err := call(s, tt.req); err != nil || got != tt.want {
				t.Errorf("call %q: %q, %v; want %q", tt.req, got, err, tt.want)
			}
		}
		_, err := call(s, testworker.FrameError)
		var e *errcode.Error
		if !errors.As(err, &e) || e.Code != errcode.Qcow2Corrupt || e.Message != testworker.ErrorMessage {
			t.Errorf("error frame: %v, want the worker's own error", err)
		}
		if got, err := call(s, testworker.FrameEcho+"after"); err != nil || got != "after" {
			t.Errorf("call after an error frame: %q, %v", got, err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	t.Run("Crash", func(t *testing.T) {
		parallel(t)
		s := start(t, timeout)
		_, err := call(s, testworker.FrameExit)
		if errcode.Of(err) != errcode.WorkerCrashed || !strings.Contains(err.Error(), "exited with status 3") ||
			!strings.Contains(err.Error(), testworker.ExitMessage) {
			t.Fatalf("error %v, want WORKER_CRASHED with the exit status and stderr", err)
		}
		if errcode.Of(s.Err()) != errcode.WorkerCrashed {
			t.Errorf("the session after its worker died: %v", s.Err())
		}
	})
	t.Run("Life", func(t *testing.T) {
		parallel(t)
		s := start(t, 2*time.Second)
		startCall := time.Now()
		if _, err := call(s, testworker.FrameSleep); errcode.Of(err) != errcode.WorkerTimeout {
			t.Fatalf("error %v, want WORKER_TIMEOUT", err)
		}
		if d := time.Since(startCall); d > slow {
			t.Errorf("the call ended %v after it began", d)
		}
	})
	t.Run("Forbidden", func(t *testing.T) {
		parallel(t)
		if opt.Unconfined {
			t.Skip("the sandbox does not confine its worker")
		}
		s := start(t, timeout)
		if got, err := call(s, testworker.FrameForbidden); errcode.Of(err) != errcode.SandboxViolation {
			t.Fatalf("forbidden call: %q, %v; want SANDBOX_VIOLATION", got, err)
		}
	})
	t.Run("Cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if s, err := sb.Start(ctx, job(testworker.OpSession)); errcode.Of(err) != errcode.Cancelled {
			if s != nil {
				s.Close()
			}
			t.Fatalf("Start with a cancelled context: %v, want CANCELLED", err)
		}
	})
	t.Run("Unstartable", func(t *testing.T) {
		if opt.Unstartable == nil {
			t.Skip("no unstartable sandbox given")
		}
		if s, err := opt.Unstartable.Start(context.Background(), job(testworker.OpSession)); errcode.Of(err) != errcode.SandboxUnavailable {
			if s != nil {
				s.Close()
			}
			t.Fatalf("error %v, want SANDBOX_UNAVAILABLE", err)
		}
	})
}

// refusedProbes are the sandbox-check probes every confined worker must see
// refused by its system-call filter.
var refusedProbes = []string{
	jail.ProbeOpenHostFile, jail.ProbeOpenRoot, jail.ProbeOpenatDotDot, jail.ProbeSocketInet,
	jail.ProbeSocketUnix, jail.ProbeSocketNetlink, jail.ProbeFork, jail.ProbeClone3, jail.ProbeExecve,
	jail.ProbePtrace, jail.ProbeMount, jail.ProbeUnshare, jail.ProbeMemfd, jail.ProbeIoctlImage,
	jail.ProbeLockImage, jail.ProbeKill, jail.ProbeMmapExec, jail.ProbeIoUring,
	jail.ProbeRecvmsgOther, jail.ProbeSendmsgFD, jail.ProbeFadviseOther,
}

// testConfined runs sandbox-check through the sandbox while this process
// holds an eventfd and an epoll descriptor without close-on-exec, as a host
// that inherited them would: every probe must pass, a forbidden call must end
// the worker, and the leaked descriptors must not reach it.
func testConfined(t *testing.T, sb vmm.Sandbox) {
	LeakDescriptors(t)
	r, err := jail.SandboxCheck(context.Background(), sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", r)
	if r.Worker == nil {
		t.Fatalf("no probe report: %s", r.WorkerError)
	}
	probes := map[string]jail.ProbeResult{}
	for _, p := range r.Worker.Probes {
		probes[p.Name] = p
		if !p.OK {
			t.Errorf("probe %s (%s, expected %s): errno %q", p.Name, p.Detail, p.Expect, p.Errno)
		}
	}
	for _, name := range refusedProbes {
		if p, ok := probes[name]; !ok {
			t.Errorf("probe %s missing", name)
		} else if p.Expect != jail.ExpectRefused || p.Errno != "EPERM" {
			t.Errorf("probe %s: %s with errno %q, want refused with EPERM", name, p.Expect, p.Errno)
		}
	}
	if p := probes[jail.ProbeWriteReadOnly]; p.Errno != "EBADF" {
		t.Errorf("write to a read-only image: errno %q, want EBADF", p.Errno)
	}
	if p, ok := probes[jail.ProbeCopyReadOnly]; ok && p.Errno != "EBADF" {
		t.Errorf("copy_file_range to a read-only image: errno %q, want EBADF", p.Errno)
	}
	if _, ok := probes[jail.ProbeNoInheritedFD]; !ok {
		t.Errorf("probe %s missing", jail.ProbeNoInheritedFD)
	}
	if !r.ViolationOK {
		t.Errorf("a forbidden system call: %s", r.Violation)
	}
	if !r.OK {
		t.Errorf("sandbox-check failed")
	}
}

// LeakDescriptors gives this process, until the end of the test, an eventfd
// and an epoll descriptor watching it, both without close-on-exec, as a host
// that inherited them would hold: every child process inherits them, and to a
// worker they look like the Go runtime's own.
func LeakDescriptors(t *testing.T) {
	t.Helper()
	efd, err := unix.Eventfd(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(efd) })
	epfd, err := unix.EpollCreate(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(epfd) })
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}); err != nil {
		t.Fatal(err)
	}
}

// scratchSize is the length of each file Scratch creates.
const scratchSize = 64 << 10

// Scratch creates one 64 KiB file per image, each with its own content, opened
// read-only or writable as the image says and closed at the end of the test.
func Scratch(t *testing.T, refs []proto.ImageRef) []*os.File {
	t.Helper()
	dir := t.TempDir()
	var files []*os.File
	for i, ref := range refs {
		path := filepath.Join(dir, fmt.Sprintf("%d.img", i))
		data := bytes.Repeat([]byte(fmt.Sprintf("image %d %-8s", i, ref.Name)), 4096)
		if err := os.WriteFile(path, data[:scratchSize], 0o600); err != nil {
			t.Fatal(err)
		}
		flag := os.O_RDONLY
		if ref.Writable {
			flag = os.O_RDWR
		}
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	return files
}

// contents reads every file whole, through its own descriptor.
func contents(t *testing.T, files []*os.File) [][]byte {
	t.Helper()
	var all [][]byte
	for _, f := range files {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, fi.Size())
		if _, err := f.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		all = append(all, b)
	}
	return all
}
