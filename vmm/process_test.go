package vmm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"instarfs/errcode"
	"instarfs/proto"
)

func TestMain(m *testing.M) {
	if os.Args[0] == proto.WorkerArg0 {
		testWorker()
		os.Exit(0)
	}
	UseWorker("/proc/self/exe") // the test binary is its own worker
	os.Exit(m.Run())
}

// testWorker is an unconfined worker for the protocol tests; the confined one is
// tested in vmm/jail.
func testWorker() {
	var req proto.Request
	dec := json.NewDecoder(os.Stdin)
	if err := dec.Decode(&req); err != nil {
		fmt.Fprintf(os.Stderr, "decoding request: %v\n", err)
		os.Exit(9)
	}
	result := func(v any) {
		b, _ := json.Marshal(v)
		m, _ := json.Marshal(proto.Message{Result: b})
		os.Stdout.Write(append(m, '\n'))
	}
	switch req.Op {
	case proto.OpNoop:
		result(struct{}{})
	case "session":
		result("ready")
		in, err := proto.SessionInput(dec, os.Stdin)
		if err != nil {
			os.Exit(7)
		}
		shared, err := proto.WorkerShared(req)
		if err != nil {
			os.Exit(6)
		}
		sessionWorker(in, shared)
	case "session-error":
		m, _ := json.Marshal(proto.Message{Error: errcode.New(errcode.ReadFailed, "cannot begin")})
		os.Stdout.Write(append(m, '\n'))
	case "session-garbage":
		os.Stdout.Write([]byte("not json\n"))
		time.Sleep(time.Hour)
	case "env":
		result(os.Environ())
	case "read-image":
		f := os.NewFile(uintptr(proto.FirstImageFD), req.Images[0].Name)
		b, err := io.ReadAll(f)
		if err != nil {
			os.Exit(8)
		}
		result(string(b))
	case "sigkill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	case "stderr-exit":
		fmt.Fprintln(os.Stderr, "some noise")
		fmt.Fprintln(os.Stderr, "worker: the image exploded")
		os.Exit(5)
	case "panic":
		panic("boom")
	case "sleep":
		time.Sleep(time.Hour)
	case "close-stdout-sleep":
		os.Stdout.Close()
		time.Sleep(time.Hour)
	case "alloc":
		// Touch 64 MiB, so that the peak resident set shows it.
		b := make([]byte, 64<<20)
		for i := range b {
			b[i] = 1
		}
		result(len(b))
	case "broker":
		// Sends each string of the arguments as one datagram on the broker
		// socket and answers what came back: each reply and the first
		// bytes of the file that came with it.
		var questions []string
		json.Unmarshal(req.Args, &questions)
		fd := req.BrokerFD()
		var answers []string
		for _, q := range questions {
			if _, err := syscall.Write(fd, []byte(q)); err != nil {
				os.Exit(4)
			}
			buf, oob := make([]byte, 1<<16), make([]byte, 64)
			n, oobn, _, _, err := syscall.Recvmsg(fd, buf, oob, 0)
			if err != nil || n == 0 {
				os.Exit(3)
			}
			a := string(buf[:n])
			if msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn]); len(msgs) == 1 {
				fds, _ := syscall.ParseUnixRights(&msgs[0])
				b := make([]byte, 16)
				k, _ := syscall.Pread(fds[0], b, 0)
				a += " file:" + string(b[:k])
			}
			answers = append(answers, a)
		}
		result(answers)
	case "stderr-flood":
		chunk := bytes.Repeat([]byte("e"), 1<<20)
		for i := 0; i < 8; i++ {
			os.Stderr.Write(chunk)
		}
		os.Exit(6)
	}
}

func plainProcess() *Process {
	return &Process{Env: []string{"INSTARFS_TEST=1"}}
}

func TestProcessOutcomes(t *testing.T) {
	tests := []struct {
		op      string
		args    json.RawMessage
		files   []*os.File
		timeout time.Duration
		code    errcode.Code
		message string
	}{
		{op: proto.OpNoop},
		// The request is encoded once the worker runs, which is then killed.
		{op: proto.OpNoop, args: json.RawMessage(`{"unclosed":`), code: errcode.Internal, message: "encoding the worker request"},
		{op: proto.OpNoop, files: []*os.File{os.Stdin}, code: errcode.Internal, message: "1 image descriptors for 0 images"},
		{op: "sigkill", code: errcode.WorkerCrashed, message: "killed by signal 9 (killed) without a result"},
		{op: "stderr-exit", code: errcode.WorkerCrashed, message: "exited with status 5 without a result; stderr: some noise worker: the image exploded"},
		{op: "panic", code: errcode.WorkerCrashed, message: "exited with status 2 without a result; stderr: panic: boom"},
		{op: "sleep", timeout: 200 * time.Millisecond, code: errcode.WorkerTimeout, message: "within 200ms"},
		{op: "close-stdout-sleep", timeout: 200 * time.Millisecond, code: errcode.WorkerTimeout},
		{op: "stderr-flood", code: errcode.WorkerCrashed, message: "exited with status 6"},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			job := Job{Request: proto.Request{Op: tt.op, Args: tt.args}, Files: tt.files, Timeout: tt.timeout}
			_, err := plainProcess().Run(context.Background(), job)
			if tt.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if errcode.Of(err) != tt.code || !strings.Contains(fmt.Sprint(err), tt.message) {
				t.Fatalf("error %s %q, want %s containing %q", errcode.Of(err), err, tt.code, tt.message)
			}
		})
	}
}

// TestProcessLogsExit checks the debug line of every reaped worker, from Run
// and from a session: its pid is the started worker's, and its peak RSS
// covers what the worker touched.
func TestProcessLogsExit(t *testing.T) {
	tests := []struct {
		name   string
		run    func(p *Process) error
		minRSS int64 // KiB
	}{
		{"run noop", func(p *Process) error {
			_, err := p.Run(context.Background(), Job{Request: proto.Request{Op: proto.OpNoop}})
			return err
		}, 1},
		{"run alloc", func(p *Process) error {
			_, err := p.Run(context.Background(), Job{Request: proto.Request{Op: "alloc"}})
			return err
		}, 64 << 10},
		{"session", func(p *Process) error {
			s, err := p.Start(context.Background(), Job{Request: proto.Request{Op: "session"}, Timeout: time.Minute, Shared: 64})
			if err != nil {
				return err
			}
			return s.Close()
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, hook := logtest.NewNullLogger()
			log.SetLevel(logrus.DebugLevel)
			var pids []int
			p := plainProcess()
			p.Log = log
			p.Started = func(pid int) { pids = append(pids, pid) }
			if err := tt.run(p); err != nil {
				t.Fatal(err)
			}
			var lines []*logrus.Entry
			for _, e := range hook.AllEntries() {
				if e.Message == ExitedMessage {
					lines = append(lines, e)
				}
			}
			if len(lines) != 1 || len(pids) != 1 {
				t.Fatalf("%d exit lines for %d started workers, want 1 and 1", len(lines), len(pids))
			}
			if pid := lines[0].Data["pid"]; pid != pids[0] {
				t.Errorf("exit line for pid %v, started %d", pid, pids[0])
			}
			if rss, _ := lines[0].Data["maxrss_kib"].(int64); rss < tt.minRSS {
				t.Errorf("maxrss_kib %v, want at least %d", lines[0].Data["maxrss_kib"], tt.minRSS)
			}
		})
	}
}

func TestProcessEnvironmentIsNotInherited(t *testing.T) {
	t.Setenv("INSTARFS_HOST_SECRET", "x")
	res, err := plainProcess().Run(context.Background(), Job{Request: proto.Request{Op: "env"}})
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	if err := json.Unmarshal(res, &env); err != nil {
		t.Fatal(err)
	}
	if len(env) != 1 || env[0] != "INSTARFS_TEST=1" {
		t.Errorf("worker environment %q, want exactly INSTARFS_TEST=1", env)
	}
}

func TestProcessPassesImages(t *testing.T) {
	path := t.TempDir() + "/img"
	if err := os.WriteFile(path, []byte("image bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := plainProcess().Run(context.Background(), Job{
		Request: proto.Request{Op: "read-image", Images: []proto.ImageRef{{Name: "img"}}},
		Files:   []*os.File{f},
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(res) != `"image bytes"` {
		t.Errorf("worker read %s", res)
	}
	_, err = plainProcess().Run(context.Background(), Job{Request: proto.Request{Op: "read-image", Images: []proto.ImageRef{{Name: "img"}}}})
	if errcode.Of(err) != errcode.Internal {
		t.Errorf("images without descriptors: %v, want INTERNAL", err)
	}
}

func TestProcessContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := plainProcess().Run(ctx, Job{Request: proto.Request{Op: "sleep"}})
	if errcode.Of(err) != errcode.WorkerTimeout || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("deadline: %v, want WORKER_TIMEOUT", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = plainProcess().Run(ctx, Job{Request: proto.Request{Op: "sleep"}})
	if errcode.Of(err) != errcode.Cancelled {
		t.Errorf("cancel: %v, want CANCELLED", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
}

func TestProcessStartError(t *testing.T) {
	p := &Process{Path: "/nonexistent/instarfs", Env: []string{}}
	_, err := p.Run(context.Background(), Job{Request: proto.Request{Op: proto.OpNoop}})
	var se *StartError
	if !errors.As(err, &se) || errcode.Of(err) != errcode.SandboxUnavailable || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("error %v (%T), want a SANDBOX_UNAVAILABLE StartError wrapping ENOENT", err, err)
	}
}

func TestReadMessages(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		final    bool
		result   string
		code     errcode.Code // of the worker's error line
		err      string       // protocol violation, substring
		progress []float64
		warnings []string
		cuts     []proto.Cut
		noCuts   bool // the run takes no cut line
	}{
		{name: "result", in: "{\"result\":{\"a\":1}}\n", final: true, result: `{"a":1}`},
		{name: "progress then result", in: "{\"progress\":0}\n{\"progress\":0.5}\n{\"result\":2}\n", final: true, result: "2", progress: []float64{0, 0.5}},
		{name: "warning", in: "{\"warning\":\"no landlock\\u001b[31m\"}\n{\"result\":1}\n", final: true, result: "1", warnings: []string{"no landlock?[31m"}},
		{name: "error", in: "{\"error\":{\"Code\":\"QCOW2_CORRUPT\",\"Message\":\"bad L1\"}}\n", final: true, code: "QCOW2_CORRUPT"},
		{name: "nothing", in: ""},
		{name: "progress only", in: "{\"progress\":1}\n", progress: []float64{1}},
		{name: "garbage", in: "hello\n", err: "not a protocol message"},
		{name: "unknown field", in: "{\"result\":1,\"x\":2}\n", err: "unknown field"},
		{name: "unknown error field", in: "{\"error\":{\"Code\":\"X\",\"Message\":\"m\",\"Path\":\"/\"}}\n", err: "unknown field"},
		{name: "two fields", in: "{\"result\":1,\"progress\":0.5}\n", err: "sets 2"},
		{name: "no field", in: "{}\n", err: "sets 0"},
		{name: "null", in: "null\n", err: "sets 0"},
		{name: "null result", in: "{\"result\":null}\n", err: "sets 0"},
		{name: "array", in: "[1]\n", err: "not a protocol message"},
		{name: "trailing data", in: "{\"result\":1} {}\n", err: "data after"},
		{name: "empty line", in: "\n", err: "not a protocol message"},
		{name: "no newline", in: "{\"result\":1}", err: "newline"},
		{name: "two results", in: "{\"result\":1}\n{\"result\":2}\n", err: "follows the final line"},
		{name: "progress after result", in: "{\"result\":1}\n{\"progress\":1}\n", err: "follows the final line"},
		{name: "progress too big", in: "{\"progress\":1.5}\n", err: "outside [0,1]"},
		{name: "progress negative", in: "{\"progress\":-0.1}\n", err: "outside [0,1]"},
		{name: "long warning", in: "{\"warning\":\"" + strings.Repeat("w", proto.MaxProgressLineBytes) + "\"}\n", err: "longer than"},
		{name: "too many warnings", in: strings.Repeat("{\"warning\":\"w\"}\n", proto.MaxWarnings+1), err: "warning lines"},
		{name: "bad code", in: "{\"error\":{\"Code\":\"not upper\",\"Message\":\"m\"}}\n", err: "not one a worker may send"},
		{name: "empty code", in: "{\"error\":{\"Code\":\"\",\"Message\":\"m\"}}\n", err: "not one a worker may send"},
		{name: "unknown code", in: "{\"error\":{\"Code\":\"QCOW2_FINE\",\"Message\":\"m\"}}\n", err: "not one a worker may send"},
		{name: "policy code", in: "{\"error\":{\"Code\":\"BACKING_PATH_OUTSIDE_ROOT\",\"Message\":\"m\"}}\n", err: "not one a worker may send"},
		{name: "lock code", in: "{\"error\":{\"Code\":\"IMAGE_IN_USE\",\"Message\":\"m\"}}\n", err: "not one a worker may send"},
		{name: "outcome code", in: "{\"error\":{\"Code\":\"SANDBOX_VIOLATION\",\"Message\":\"m\"}}\n", err: "not one a worker may send"},
		{name: "confinement failed", in: "{\"error\":{\"Code\":\"SANDBOX_UNAVAILABLE\",\"Message\":\"m\"}}\n", final: true, code: errcode.SandboxUnavailable},
		{name: "cut then result", in: "{\"cut\":{\"image\":1,\"length\":65536}}\n{\"result\":1}\n", final: true, result: "1", cuts: []proto.Cut{{Image: 1, Length: 65536}}},
		{name: "cut refused", in: "{\"cut\":{\"image\":9,\"length\":1}}\n{\"result\":1}\n", err: "line 1: refused"},
		{name: "cut not taken", in: "{\"cut\":{\"image\":0,\"length\":1}}\n{\"result\":1}\n", noCuts: true, err: "does not take"},
		{name: "cut with a warning", in: "{\"cut\":{\"image\":0,\"length\":1},\"warning\":\"w\"}\n", err: "sets 2"},
		{name: "cut after result", in: "{\"result\":1}\n{\"cut\":{\"image\":0,\"length\":1}}\n", err: "follows the final line"},
		{name: "cut unknown field", in: "{\"cut\":{\"image\":0,\"length\":1,\"path\":\"/\"}}\n", err: "unknown field"},
		{name: "long error", in: "{\"error\":{\"Code\":\"X\",\"Message\":\"" + strings.Repeat("m", proto.MaxErrorLineBytes) + "\"}}\n", err: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var progress []float64
			var warnings []string
			var cuts []proto.Cut
			cut := func(c proto.Cut) error {
				if c.Image == 9 {
					return errors.New("refused")
				}
				cuts = append(cuts, c)
				return nil
			}
			if tt.noCuts {
				cut = nil
			}
			out := readMessages(strings.NewReader(tt.in),
				func(p float64) { progress = append(progress, p) },
				func(w string) { warnings = append(warnings, w) }, cut)
			if tt.err != "" {
				if out.err == nil || !strings.Contains(out.err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", out.err, tt.err)
				}
				return
			}
			if out.err != nil {
				t.Fatalf("unexpected error %v", out.err)
			}
			if out.final != tt.final || string(out.result) != tt.result {
				t.Errorf("final %v result %s, want %v %s", out.final, out.result, tt.final, tt.result)
			}
			if tt.code != "" && (out.werr == nil || out.werr.Code != tt.code) {
				t.Errorf("worker error %v, want code %s", out.werr, tt.code)
			}
			if fmt.Sprint(progress) != fmt.Sprint(tt.progress) || fmt.Sprint(warnings) != fmt.Sprint(tt.warnings) {
				t.Errorf("progress %v warnings %q, want %v %q", progress, warnings, tt.progress, tt.warnings)
			}
			if fmt.Sprint(cuts) != fmt.Sprint(tt.cuts) {
				t.Errorf("cuts %v, want %v", cuts, tt.cuts)
			}
		})
	}
}

// endless yields a result line that never ends.
type endless struct{ started bool }

func (e *endless) Read(p []byte) (int, error) {
	if !e.started {
		e.started = true
		return copy(p, `{"result":"`), nil
	}
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

func TestReadMessagesBound(t *testing.T) {
	out := readMessages(&endless{}, nil, func(string) {}, nil)
	if out.err == nil || !strings.Contains(out.err.Error(), "more than") {
		t.Fatalf("error %v, want the output bound", out.err)
	}
	// Exactly MaxResultBytes is allowed.
	body := `{"result":"` + strings.Repeat("x", proto.MaxResultBytes-len(`{"result":""}`+"\n")) + `"}` + "\n"
	out = readMessages(strings.NewReader(body), nil, func(string) {}, nil)
	if out.err != nil || !out.final {
		t.Fatalf("a result of exactly %d bytes: %v", proto.MaxResultBytes, out.err)
	}
}

func TestStderrSummary(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"\n  \n", ""},
		{"line one\nline two\n", "line one line two"},
		{"goroutine noise\npanic: runtime error: index out of range\n\ngoroutine 1 [running]:\n", "panic: runtime error: index out of range"},
		{"fatal error: out of memory\n", "fatal error: out of memory"},
		{strings.Repeat("a", 600) + "END", "..." + strings.Repeat("a", 509) + "END"},
		{"bell\a here", "bell? here"},
	}
	for _, tt := range tests {
		if got := StderrSummary([]byte(tt.in)); got != tt.want {
			t.Errorf("StderrSummary(%.40q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHeadBuffer(t *testing.T) {
	b := &headBuffer{max: 5}
	for _, s := range []string{"abc", "def", "ghi"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := string(b.Bytes()); got != "abcde" {
		t.Errorf("kept %q, want abcde", got)
	}
}

func TestRegistry(t *testing.T) {
	Register("test-backend", func() (Sandbox, error) { return nil, errcode.New(errcode.SandboxUnavailable, "not here") })
	if _, err := New("test-backend"); errcode.Of(err) != errcode.SandboxUnavailable {
		t.Errorf("New(test-backend): %v", err)
	}
	if _, err := New("no-such-sandbox"); errcode.Of(err) != errcode.BadArguments || !strings.Contains(err.Error(), "test-backend") {
		t.Errorf("New(no-such-sandbox): %v, want BAD_ARGUMENTS listing the backends", err)
	}
	defer func() {
		if recover() == nil {
			t.Errorf("registering a name twice did not panic")
		}
	}()
	Register("test-backend", nil)
}
