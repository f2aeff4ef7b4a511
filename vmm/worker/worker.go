// Package worker is the inside of the sandbox: it reads one proto.Request, runs the
// operation on the image descriptors it was handed, and writes the result.
//
// This is the only package that parses image bytes. It is reached through
// vmm.Sandbox, never called directly by the host side.
package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"runtime/debug"
	"sync"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/jail"
)

// maxRequestBytes bounds the request read from standard input.
const maxRequestBytes = 1 << 20

// files are the image descriptors handed to this worker. They live in a package
// variable so that no finalizer closes them while an operation still uses the
// descriptor numbers.
var files []*os.File

// An operation is what the worker does for one op name: run answers one
// request with one result document; serve, for an operation that serves a
// session (vmm.Session), writes the ready line itself and then answers the
// frames read from in.
type operation struct {
	run   func(ctx context.Context, s *session) (any, error)
	serve func(s *session, in io.Reader) error
}

// ops are the worker's operations.
var ops = map[string]operation{
	proto.OpNoop:   {run: func(context.Context, *session) (any, error) { return struct{}{}, nil }},
	proto.OpProbe:  {run: opProbe},
	proto.OpMap:    {run: opMap},
	proto.OpCheck:  {run: opCheck},
	proto.OpRepair: {run: opRepair},
	proto.OpRebase: {run: opRebase},
	proto.OpCommit: {run: opCommit},
	proto.OpSurvey: {run: opSurvey},
	proto.OpDisk:   {serve: serveDisk},

	proto.OpSandboxProbe:   {run: func(_ context.Context, s *session) (any, error) { return jail.RunProbes(s.req), nil }},
	proto.OpSandboxViolate: {run: func(context.Context, *session) (any, error) { return nil, jail.Violate() }},
}

// session is one request being served.
type session struct {
	req   proto.Request
	files []*os.File
	// broker is the descriptor of the host's broker socket, or -1.
	broker int
	port   *port      // the broker, when it is a microvm guest's port
	drives []*os.File // the files attached for the port's answers
	out    *output
	began  bool // a session operation wrote its ready line
}

// memoryLimit is the worker's soft memory limit (runtime/debug): the garbage
// collector works harder as the heap nears it, instead of letting it grow to
// twice what is live. What is live stays well below it (the L2 table caches
// of a few images, the buffers of one operation), so the worker's peak
// resident set stays within 128 MiB even on a 1 TiB image; a heap that does
// need more still gets it.
const memoryLimit = 96 << 20

// Main is the worker's entry point: the instarfs-worker executable's main.
// It never returns.
func Main() {
	go proto.WarmJSON() // on another thread, while this one confines the worker
	if _, err := jail.Confine(); err != nil {
		out := &output{w: bufio.NewWriter(os.Stdout)}
		out.fail(err)
		out.flush()
		os.Exit(1)
	}
	code := Serve(os.Stdin, os.Stdout)
	// The host reads the output to its end before it waits for the worker.
	// Closed here, the end reaches it at once; left to the exit, it would
	// reach it only once the kernel has torn down the worker's namespaces.
	os.Stdout.Close()
	os.Exit(code)
}

// Serve sends the confinement's warnings, reads one request from r, runs it on
// the image descriptors at proto.FirstImageFD.., and writes the protocol lines
// to w. It returns the exit status the worker should end with. The caller
// must have confined itself (Main; the microvm guest's /init after
// jail.ConfineGuest).
func Serve(r io.Reader, w io.Writer) int {
	debug.SetMemoryLimit(memoryLimit)
	out := &output{w: bufio.NewWriter(w)}
	for _, msg := range jail.CurrentStatus().Warnings {
		out.line(proto.Message{Warning: msg})
	}
	// The request runs on a goroutine of its own: the calling one stays
	// locked to its thread (jail.Confine), and every wake-up of a locked
	// goroutine hands it over between threads, which the data paths'
	// readers and writers would pay thousands of times. The confinement
	// covers every thread.
	done := make(chan int)
	go func() { done <- serve(r, out) }()
	code := <-done
	out.flush()
	return code
}

func serve(stdin io.Reader, out *output) (code int) {
	defer func() {
		if r := recover(); r != nil {
			stack := debug.Stack()
			out.fail(errcode.New(errcode.Internal, "worker panic: %v\n%s", r, stack[:min(len(stack), 16<<10)]))
			code = 1
		}
	}()
	var req proto.Request
	dec := json.NewDecoder(io.LimitReader(stdin, maxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		out.fail(errcode.New(errcode.WorkerProtocol, "decoding request: %v", err))
		return 1
	}
	out.wantProgress = req.Progress
	for i, ref := range req.Images {
		files = append(files, os.NewFile(uintptr(proto.FirstImageFD+i), ref.Name))
	}
	op, ok := ops[req.Op]
	if !ok {
		out.fail(errcode.New(errcode.WorkerProtocol, "unknown operation %q", req.Op))
		return 1
	}
	if op.serve != nil {
		s := &session{req: req, files: files, out: out}
		in, err := proto.SessionInput(dec, stdin)
		if err == nil {
			err = op.serve(s, in)
		}
		if err != nil {
			if !s.began {
				out.fail(err)
			}
			return 1
		}
		return 0
	}
	s := &session{req: req, files: files[:len(files):len(files)], out: out, broker: -1}
	if req.Broker {
		s.broker = req.BrokerFD()
	}
	if req.Broker && req.BrokerPort {
		s.port = &port{r: PortReader{FD: s.broker}, w: FDWriter(s.broker)}
		for k, ref := range req.Drives {
			s.drives = append(s.drives, os.NewFile(uintptr(s.broker+1+k), ref.Name))
		}
		files = append(files, s.drives...) // DeviceLengths reports them too
	}
	res, err := op.run(context.Background(), s)
	if err != nil {
		out.fail(err)
		return 1
	}
	out.result(res)
	return 0
}

// args decodes the request's arguments strictly into v.
func (s *session) args(v any) error {
	if len(s.req.Args) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(s.req.Args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errcode.New(errcode.WorkerProtocol, "decoding %s arguments: %v", s.req.Op, err)
	}
	return nil
}

// need fails unless the request carries at least n images.
func (s *session) need(n int) error {
	if len(s.req.Images) < n || len(s.files) < n {
		return errcode.New(errcode.WorkerProtocol, "%s needs %d image(s), got %d", s.req.Op, n, len(s.req.Images))
	}
	return nil
}

// output writes the worker's JSON lines.
type output struct {
	mu           sync.Mutex
	w            *bufio.Writer
	percent      int
	wantProgress bool // the host shows progress (proto.Request.Progress)
}

func (o *output) line(m proto.Message) {
	b, err := json.Marshal(m)
	if err != nil {
		b, _ = json.Marshal(proto.Message{Error: errcode.New(errcode.Internal, "encoding result: %v", err)})
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.Write(b)
	o.w.WriteByte('\n')
}

// progress reports a fraction of work done, at most once per percent, when
// the host shows it: a line nobody reads would wake the host for nothing.
func (o *output) progress(f float64) {
	p := int(f * 100)
	if !o.wantProgress || p <= o.percent || p > 100 {
		return
	}
	o.percent = p
	sent := f // escapes, but only here, not on every call
	o.line(proto.Message{Progress: &sent})
	o.flush()
}

// maxResultJSON bounds the JSON of a result: the host reads at most
// proto.MaxResultBytes of a worker's output, and takes a worker that writes more
// for a broken one; some of it is kept for progress and warning lines and the
// message around the result.
const maxResultJSON = proto.MaxResultBytes - 1<<20

func (o *output) result(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		o.fail(errcode.New(errcode.Internal, "encoding result: %v", err))
		return
	}
	if len(b) > maxResultJSON {
		// A small image can describe more than that: 64 MiB of snapshot
		// names made of control characters encode to six times as much.
		o.fail(errcode.New(errcode.ImageTooLarge, "the answer about this image is %d bytes of JSON, more than a worker may send (%d)", len(b), maxResultJSON))
		return
	}
	// The line proto.Message{Result: b} encodes to, written without
	// encoding/json's second pass over b, which is compact JSON already.
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.WriteString(`{"result":`)
	o.w.Write(b)
	o.w.WriteString("}\n")
}

func (o *output) fail(err error) {
	var e *errcode.Error
	if !errors.As(err, &e) {
		e = &errcode.Error{Code: errcode.Internal, Message: err.Error()}
	}
	o.line(proto.Message{Error: e})
}

// frame writes one reply frame of a session, of length n, and flushes it;
// body is empty when the answer is elsewhere (proto.FrameShared).
func (o *output) frame(status byte, n int, body []byte) {
	var hdr [5]byte
	hdr[0] = status
	binary.BigEndian.PutUint32(hdr[1:], uint32(n))
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.Write(hdr[:])
	o.w.Write(body)
	o.w.Flush()
}

func (o *output) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.Flush()
}

func errInternal(format string, args ...any) error {
	return errcode.New(errcode.Internal, format, args...)
}
