package vmm

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// A session is a worker that stays up and answers requests, for work made of
// many small steps over the same images (the disk view's reads).
//
// It starts like a run: the host writes the request line, and the worker
// writes protocol lines (proto.Message). Its result line is the session's ready
// document; an error line ends the session before it began. From then on both
// sides speak frames:
//
//	host → worker: length uint32 (big endian), then that many bytes
//	worker → host: status byte, length uint32 (big endian), then that many bytes
//
// one reply per request, in order. Status FrameOK carries the answer, status
// FrameError a JSON errcode.Error; the session goes on after either. Closing
// the worker's standard input ends it.
//
// The host treats the replies as hostile, as Run treats a worker's output: a
// reply longer than the caller allows, an error frame over MaxErrorLineBytes
// or not a strict errcode.Error with a code a worker may send, an unknown
// status, a ready line over MaxErrorLineBytes, or no reply within CallTimeout
// kills the worker, and the session fails from then on.

// Bounds of a session.
const (
	// CallTimeout bounds one request: the worker that has not answered by
	// then is killed (WORKER_TIMEOUT).
	CallTimeout = time.Minute
	// readyTimeout bounds the wait for the ready line.
	readyTimeout = time.Minute
	// sessionPipeBytes is the size asked for the worker's standard output.
	sessionPipeBytes = 1<<20 + 4<<10
	// closeGrace is how long a closed session's worker may take to exit.
	closeGrace = 2 * time.Second
)

// callTimeout is CallTimeout; tests shorten it.
var callTimeout = CallTimeout

// Session is the host side of a worker started with Start.
type Session struct {
	// Ready is the worker's ready document (its result line).
	Ready json.RawMessage

	cmd     *exec.Cmd
	pp      *pipes
	shared  []byte // the host's mapping of the shared memory
	br      *bufio.Reader
	stderr  *headBuffer
	exited  chan struct{}
	life    *time.Timer
	timeout time.Duration
	cpu     time.Duration
	ended   func(syscall.WaitStatus, []byte) (syscall.WaitStatus, []byte)
	log     logrus.FieldLogger

	stop atomic.Int32 // a stopReason: why the host killed the worker

	mu     sync.Mutex // one call at a time; guards the fields below
	failed error      // set once the session is unusable
	closed bool
	hdr    [5]byte
}

// Start starts a worker for a session: it runs job.Request like Run, then
// keeps the worker up until Close, job.Timeout (its whole life, counted from
// the ready document) or a failure. ctx bounds the start only. The caller keeps job.Files open while the
// session lives.
func (p *Process) Start(ctx context.Context, job Job) (*Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, contextError(err)
	}
	if job.Broker != nil {
		return nil, errcode.New(errcode.Internal, "a session's worker is given its images up front, not through a broker")
	}
	if job.Shared > 0 {
		job.Request.Shared = job.Shared
	}
	timeout, err := checkJob(job)
	if err != nil {
		return nil, err
	}
	request, err := encodeRequest(job.Request)
	if err != nil {
		return nil, err
	}
	log, warn := p.loggers()
	files := p.inherited(job)
	var shared []byte
	if job.Shared > 0 && p.Inherit == nil { // a guest makes its own
		f, m, err := sharedMemory(job.Shared)
		if err != nil {
			return nil, &StartError{Err: err}
		}
		defer f.Close() // the mapping stays, and the worker has its own
		files, shared = append(append([]*os.File{}, files...), f), m
	}
	pp, err := newPipes()
	if err != nil {
		unix.Munmap(shared)
		return nil, &StartError{Err: err}
	}
	// A whole read reply fits in the pipe: the worker writes it in one go.
	// Best effort: the kernel caps pipe sizes (fs.pipe-max-size).
	// (Fd would make the pipe blocking and end its deadlines.)
	if rc, err := pp.stdoutR.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, sessionPipeBytes) })
	}
	cmd, err := p.start(pp, files)
	if err != nil {
		pp.closeHost()
		unix.Munmap(shared)
		return nil, err
	}
	s := &Session{
		cmd: cmd, pp: pp, shared: shared, br: bufio.NewReaderSize(pp.stdoutR, 64<<10),
		stderr: &headBuffer{max: MaxStderrBytes}, exited: make(chan struct{}),
		timeout: timeout, cpu: p.CPULimit, ended: p.Ended, log: log,
	}
	stderrDone := make(chan struct{})
	go func() {
		io.Copy(s.stderr, pp.stderrR)
		close(stderrDone)
	}()
	go func() {
		cmd.Wait()
		p.reaped(cmd.ProcessState)
		// What the worker wrote last says why it died: wait for it, as Run
		// does, unless something else still holds its stderr.
		select {
		case <-stderrDone:
		case <-time.After(time.Second):
		}
		close(s.exited)
	}()
	// Armed at the ready document; until then readyTimeout and ctx bound
	// the start.
	s.life = time.AfterFunc(time.Hour, func() { s.kill(stopTimeout) })
	s.life.Stop()

	stop := context.AfterFunc(ctx, func() { s.kill(stopCancelled) })
	defer stop()
	pp.stdinW.SetWriteDeadline(time.Now().Add(readyTimeout))
	if _, err := pp.stdinW.Write(request); err != nil {
		return nil, s.abort(fmt.Errorf("writing the request: %w", err))
	}
	pp.stdoutR.SetReadDeadline(time.Now().Add(readyTimeout))
	for lineNo := 1; ; lineNo++ {
		line, err := readLine(s.br, proto.MaxErrorLineBytes)
		if err != nil {
			return nil, s.abort(err)
		}
		m, err := decodeMessage(line)
		if err != nil {
			return nil, s.abort(violation("line %d: %v", lineNo, err))
		}
		if lineNo > proto.MaxWarnings {
			return nil, s.abort(violation("more than %d lines before the session began", proto.MaxWarnings))
		}
		switch {
		case m.Warning != "":
			warn(sanitize(m.Warning))
		case m.Cut != nil:
			return nil, s.abort(violation("line %d: a cut line, which a session does not take", lineNo))
		case m.Error != nil:
			s.Close()
			return nil, m.Error
		case m.Result != nil:
			s.Ready = m.Result
			// The life counts from here: a virtual machine's boot is not
			// the session's time.
			s.life.Reset(timeout)
			return s, nil
		}
	}
}

// protocolError is output that breaks the session protocol.
type protocolError struct{ err error }

func (e *protocolError) Error() string { return e.err.Error() }

func violation(format string, args ...any) error {
	return &protocolError{fmt.Errorf(format, args...)}
}

// readLine reads one line of at most max bytes, newline included.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, violation("a line longer than %d bytes", max)
		}
		switch err {
		case nil:
			return line, nil
		case bufio.ErrBufferFull:
			continue
		}
		return nil, err
	}
}

// Call sends req and reads the reply into reply, which bounds its length; it
// returns the reply's length. A FrameError reply is returned as the worker's
// *errcode.Error and leaves the session usable; every other failure ends it.
//
// ctx is checked before the request is sent; once sent, the call waits for
// the reply (at most CallTimeout): abandoning it midway would leave the
// stream out of step.
func (s *Session) Call(ctx context.Context, req, reply []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return 0, s.failed
	}
	if err := ctx.Err(); err != nil {
		return 0, contextError(err)
	}
	if len(req) > proto.MaxFrameRequest {
		return 0, errcode.New(errcode.Internal, "session request of %d bytes, more than %d", len(req), proto.MaxFrameRequest)
	}
	deadline := time.Now().Add(callTimeout)
	s.pp.stdinW.SetWriteDeadline(deadline)
	s.pp.stdoutR.SetReadDeadline(deadline)
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(req)), uint32(len(req)))
	if _, err := s.pp.stdinW.Write(append(frame, req...)); err != nil {
		return 0, s.fail(fmt.Errorf("writing a request: %w", err))
	}
	if _, err := io.ReadFull(s.br, s.hdr[:]); err != nil {
		return 0, s.fail(err)
	}
	n := int64(binary.BigEndian.Uint32(s.hdr[1:]))
	switch s.hdr[0] {
	case proto.FrameOK:
		if n > int64(len(reply)) {
			return 0, s.fail(violation("a reply of %d bytes to a request that allows %d", n, len(reply)))
		}
		if _, err := io.ReadFull(s.br, reply[:n]); err != nil {
			return 0, s.fail(err)
		}
		return int(n), nil
	case proto.FrameShared:
		if n > int64(len(reply)) || n > int64(len(s.shared)) {
			return 0, s.fail(violation("a shared reply of %d bytes to a request that allows %d (%d shared)", n, len(reply), len(s.shared)))
		}
		return copy(reply, s.shared[:n]), nil
	case proto.FrameError:
		if n > proto.MaxErrorLineBytes {
			return 0, s.fail(violation("an error frame of %d bytes, more than %d", n, proto.MaxErrorLineBytes))
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(s.br, body); err != nil {
			return 0, s.fail(err)
		}
		var e errcode.Error
		if err := proto.Decode(body, &e); err != nil || !e.Code.FromWorker() {
			return 0, s.fail(violation("an error frame that is not an error: %.80q", body))
		}
		e.Message = sanitize(e.Message)
		return 0, &e
	}
	return 0, s.fail(violation("a reply with status %d", s.hdr[0]))
}

// Err is nil while the session is usable, and otherwise why it is not.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// Pid is the worker's process id.
func (s *Session) Pid() int { return s.cmd.Process.Pid }

// Close ends the session: it waits for a call in progress, closes the
// worker's standard input and gives it a moment to exit before killing it.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.failed == nil {
		s.failed = errcode.New(errcode.Internal, "the session is closed")
	}
	s.pp.stdinW.Close()
	select {
	case <-s.exited:
	case <-time.After(closeGrace):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.life.Stop()
	s.pp.closeHost()
	if s.shared != nil {
		unix.Munmap(s.shared)
		s.shared = nil
	}
	return nil
}

// sharedMemory creates size bytes of memory to share with a worker: an
// anonymous file, and the host's mapping of it.
func sharedMemory(size int) (*os.File, []byte, error) {
	fd, err := unix.MemfdCreate("instarfs-session", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "instarfs-session")
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("sizing the shared memory: %w", err)
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("mapping the shared memory: %w", err)
	}
	return f, m, nil
}

// kill ends the worker from outside a call: its life or the start's ctx
// ended. A call in progress then fails with the reason.
func (s *Session) kill(why stopReason) {
	s.stop.CompareAndSwap(int32(stopNone), int32(why))
	s.cmd.Process.Kill()
}

// abort ends a session that failed to start.
func (s *Session) abort(cause error) error {
	s.mu.Lock()
	err := s.fail(cause)
	s.mu.Unlock()
	s.Close()
	return err
}

// fail records why the session cannot go on, kills the worker and returns
// the error that names the failure. It is called with mu held.
func (s *Session) fail(cause error) error {
	if s.failed != nil {
		return s.failed
	}
	s.cmd.Process.Kill()
	stop := stopReason(s.stop.Load())
	var violation *protocolError
	switch {
	case errors.As(cause, &violation):
		s.failed = errcode.New(errcode.WorkerProtocol, "invalid worker output: %v", violation.err)
	case errors.Is(cause, os.ErrDeadlineExceeded) && stop == stopNone:
		s.failed = errcode.New(errcode.WorkerTimeout, "the worker did not answer within %v", callTimeout)
	default:
		// The worker died: how it died says more than the failed read or
		// write did.
		select {
		case <-s.exited:
			_, s.failed = outcomeError(s.cmd.ProcessState, s.ended, stop, s.timeout, s.cpu, &outcome{}, s.stderr)
		case <-time.After(2 * time.Second):
			s.failed = errcode.New(errcode.WorkerCrashed, "the worker failed: %v", cause)
		}
	}
	if b := s.stderr.Bytes(); len(b) > 0 {
		s.log.WithField("stderr", sanitize(string(b))).Debug("sandbox session worker failed")
	}
	return s.failed
}
