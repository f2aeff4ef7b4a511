package vmm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/sirupsen/logrus"

	"instarfs/errcode"
	"instarfs/proto"
)

// Process is the host side of a worker that runs as a local process: how to
// start it, and (in Run) the protocol spoken with it. Backends that confine
// the worker executable fill in a Process and call Run.
type Process struct {
	// Path is the executable; empty means the worker executable the
	// program chose with UseWorker.
	Path string
	// Args is the worker's argv; nil means {WorkerArg0}.
	Args []string
	// Env is the worker's complete environment. Nothing is inherited from the
	// host.
	Env []string
	// SysProcAttr carries the kernel attributes of the worker (namespaces,
	// credentials, parent-death signal).
	SysProcAttr *syscall.SysProcAttr
	// Log receives diagnostics: the worker's standard error when it fails, and
	// its warnings when Warn is nil. nil means the standard logrus logger.
	Log logrus.FieldLogger
	// Warn, when set, receives each warning line of the worker (sanitized).
	Warn func(string)
	// Started, when set, is called with the worker's pid once it runs.
	Started func(pid int)
	// CPULimit is the worker's RLIMIT_CPU, if the backend set one; a worker
	// killed after using that much CPU time is reported as WORKER_TIMEOUT.
	CPULimit time.Duration
	// Exited, when set, is called once the worker has exited and been
	// waited for, or could not be started.
	Exited func()
	// Inherit, when set, is what the process inherits from fd 3 on, in
	// place of the job's image descriptors: the emulator of a virtual
	// machine receives its drives and boot files, and its guest finds the
	// images as drives.
	Inherit []*os.File
	// Ended, when set, says how the worker ended when the process is not
	// the worker itself (the emulator of a virtual machine whose pid 1 is the
	// worker): given the process's wait status and standard error, it
	// returns the worker's, which the guest's console shows.
	Ended func(ws syscall.WaitStatus, stderr []byte) (syscall.WaitStatus, []byte)
}

// StartError reports that a worker process could not be started at all. Its
// errcode is SANDBOX_UNAVAILABLE; it also unwraps to the cause, so a backend
// can tell which errno the kernel returned (errors.Is(err, syscall.EPERM)).
type StartError struct {
	Err error
}

func (e *StartError) Error() string { return "cannot start the worker: " + e.Err.Error() }

// Unwrap returns the SANDBOX_UNAVAILABLE error and the cause.
func (e *StartError) Unwrap() []error {
	return []error{errcode.New(errcode.SandboxUnavailable, "%s", e.Error()), e.Err}
}

// stopReason says why the host ended a worker before it exited on its own.
type stopReason int

const (
	stopNone stopReason = iota
	stopCancelled
	stopDeadline
	stopTimeout
)

// Run starts the worker, sends it job.Request on its standard input and the
// image descriptors job.Files as fds FirstImageFD.., and reads its standard
// output as protocol lines. It returns the worker's result, the worker's own
// *errcode.Error, or an error with one of the codes WORKER_CRASHED,
// WORKER_TIMEOUT, WORKER_PROTOCOL, SANDBOX_VIOLATION, CANCELLED or
// SANDBOX_UNAVAILABLE (*StartError).
//
// The worker is killed (SIGKILL) when ctx is done, when job.Timeout passes, and
// as soon as its output breaks the protocol.
func (p *Process) Run(ctx context.Context, job Job) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, contextError(err)
	}
	job.Request.Broker = job.Broker != nil
	job.Request.HostCuts = true
	job.Request.Progress = job.Progress != nil
	timeout, err := checkJob(job)
	if err != nil {
		return nil, err
	}
	log, warn := p.loggers()

	pp, err := newPipes()
	if err != nil {
		return nil, &StartError{Err: err}
	}
	defer pp.closeHost()

	files := p.inherited(job)
	var bc *brokerConn
	if job.Broker != nil {
		if bc, err = newBrokerConn(job.Broker); err != nil {
			pp.closeChild()
			return nil, &StartError{Err: err}
		}
		defer bc.closeHost()
		files = append(files[:len(files):len(files)], bc.child)
	}
	cmd, err := p.start(pp, files)
	if bc != nil {
		bc.closeChild()
	}
	if err != nil {
		return nil, err
	}
	brokerDone := make(chan struct{})
	if bc != nil {
		go func() {
			defer close(brokerDone)
			bc.serve(func() { cmd.Process.Kill() })
		}()
	} else {
		close(brokerDone)
	}

	// The request is encoded while the worker starts: a process's first
	// encoding builds the encoder's caches, which takes longer than the
	// rest of the host's work before the worker reads it.
	encoded := make(chan error, 1)
	go func() {
		defer pp.stdinW.Close()
		request, err := encodeRequest(job.Request)
		encoded <- err
		if err != nil {
			cmd.Process.Kill()
			return
		}
		// A worker that dies early makes this fail with EPIPE; its exit
		// status tells what happened.
		pp.stdinW.Write(request)
	}()
	stderr := &headBuffer{max: MaxStderrBytes}
	stderrDone := make(chan struct{})
	go func() {
		io.Copy(stderr, pp.stderrR)
		close(stderrDone)
	}()

	var out outcome
	cut := &cutter{files: files, images: job.Request.Images}
	done := make(chan struct{})
	go func() {
		defer close(done)
		out = readMessages(pp.stdoutR, job.Progress, warn, cut.start)
		if out.err != nil {
			cmd.Process.Kill()
		}
		cmd.Wait()
		p.reaped(cmd.ProcessState)
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	stop := stopNone
	select {
	case <-done:
	case <-ctx.Done():
		stop = stopCancelled
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			stop = stopDeadline
		}
	case <-timer.C:
		stop = stopTimeout
	}
	if stop != stopNone {
		select {
		case <-done:
			stop = stopNone // the worker finished first
		default:
			cmd.Process.Kill()
			<-done
		}
	}
	select {
	case <-stderrDone:
	case <-time.After(time.Second):
		// Something still holds the worker's stderr; stop waiting for it.
	}
	<-brokerDone // the worker's end closed when it exited
	if err := <-encoded; err != nil {
		return nil, err
	}
	if bc != nil && out.err == nil {
		out.err = bc.violation()
	}
	cutErr := cut.wait()

	res, err := outcomeError(cmd.ProcessState, p.Ended, stop, timeout, p.CPULimit, &out, stderr)
	if b := stderr.Bytes(); err != nil && len(b) > 0 {
		log.WithField("stderr", sanitize(string(b))).Debug("sandbox worker failed")
	}
	if err == nil && cutErr != nil {
		return nil, cutErr
	}
	return res, err
}

// cutter applies a worker's cut line (proto.Cut) to the image descriptors
// it was handed, on a goroutine of its own: the worker exits meanwhile.
type cutter struct {
	files  []*os.File
	images []proto.ImageRef
	image  string
	done   chan error // made when the cut starts
}

// start checks c against the request and starts it; an error is a protocol
// violation.
func (k *cutter) start(c proto.Cut) error {
	switch {
	case k.done != nil:
		return errors.New("a second cut line")
	case c.Image < 0 || c.Image >= len(k.images) || c.Image >= len(k.files):
		return fmt.Errorf("cut of image #%d, which the worker was not handed", c.Image)
	case !k.images[c.Image].Writable:
		return fmt.Errorf("cut of image #%d, which is read-only", c.Image)
	}
	f := k.files[c.Image]
	st, err := f.Stat()
	if err == nil && (c.Length < 0 || c.Length > st.Size()) {
		return fmt.Errorf("cut of image #%d to %d bytes: it has %d", c.Image, c.Length, st.Size())
	}
	k.image = k.images[c.Image].Name
	k.done = make(chan error, 1)
	go func() {
		if err == nil {
			err = f.Truncate(c.Length)
		}
		if err == nil {
			err = syscall.Fdatasync(int(f.Fd()))
		}
		k.done <- err
	}()
	return nil
}

// wait waits for the cut, if one started, and returns its error.
func (k *cutter) wait() error {
	if k.done == nil {
		return nil
	}
	if err := <-k.done; err != nil {
		return errcode.New(errcode.WriteFailed, "shortening %s as the worker asked: %v", k.image, err)
	}
	return nil
}

// inherited is what the process inherits from fd 3 on.
func (p *Process) inherited(job Job) []*os.File {
	if p.Inherit != nil {
		return p.Inherit
	}
	return job.Files
}

func (p *Process) exited() {
	if p.Exited != nil {
		p.Exited()
	}
}

// ExitedMessage is the debug log line of a worker that has exited and been
// waited for. Its fields: pid, maxrss_kib (the worker's peak resident set),
// user and sys (CPU times); `make bench` counts and reads these lines.
const ExitedMessage = "sandbox worker exited"

// reaped logs the resources a waited-for worker used, then calls Exited.
func (p *Process) reaped(state *os.ProcessState) {
	if state != nil {
		log, _ := p.loggers()
		fields := logrus.Fields{"pid": state.Pid(), "user": state.UserTime().String(), "sys": state.SystemTime().String()}
		if ru, ok := state.SysUsage().(*syscall.Rusage); ok {
			fields["maxrss_kib"] = ru.Maxrss
		}
		log.WithFields(fields).Debug(ExitedMessage)
	}
	p.exited()
}

// checkJob checks job and returns its timeout.
func checkJob(job Job) (time.Duration, error) {
	if len(job.Files) != len(job.Request.Images) {
		return 0, errcode.New(errcode.Internal, "job has %d image descriptors for %d images",
			len(job.Files), len(job.Request.Images))
	}
	if job.Timeout <= 0 {
		return DefaultTimeout, nil
	}
	return job.Timeout, nil
}

// encodeRequest returns the request line of req.
func encodeRequest(req proto.Request) ([]byte, error) {
	request, err := json.Marshal(req)
	if err != nil {
		return nil, errcode.New(errcode.Internal, "encoding the worker request: %v", err)
	}
	return append(request, '\n'), nil
}

// loggers returns where the worker's diagnostics and warnings go.
func (p *Process) loggers() (logrus.FieldLogger, func(string)) {
	log := p.Log
	if log == nil {
		log = logrus.StandardLogger()
	}
	warn := p.Warn
	if warn == nil {
		warn = func(s string) { log.Warnf("sandbox worker: %s", s) }
	}
	return log, warn
}

// start starts the worker on the standard streams pp and the image
// descriptors files. The child's ends of pp are closed in the host either way.
func (p *Process) start(pp *pipes, files []*os.File) (*exec.Cmd, error) {
	cmd := &exec.Cmd{
		Path:        p.Path,
		Args:        p.Args,
		Env:         append([]string{}, p.Env...), // never nil: nil would inherit
		Dir:         "/",
		Stdin:       pp.stdinR,
		Stdout:      pp.stdoutW,
		Stderr:      pp.stderrW,
		ExtraFiles:  files,
		SysProcAttr: p.SysProcAttr,
	}
	if cmd.Args == nil {
		cmd.Args = []string{proto.WorkerArg0}
	}
	var err error
	if cmd.Path == "" {
		var release func()
		cmd.Path, release, err = defaultExecPath(pp, files)
		if err == nil {
			defer release()
		}
	}
	if err == nil {
		err = cmd.Start()
	}
	pp.closeChild()
	if err != nil {
		p.exited()
		return nil, &StartError{Err: err}
	}
	if p.Started != nil {
		p.Started(cmd.Process.Pid)
	}
	return cmd, nil
}

// outcomeError maps how the worker ended to the result of Run.
func outcomeError(state *os.ProcessState, ended func(syscall.WaitStatus, []byte) (syscall.WaitStatus, []byte),
	stop stopReason, timeout, cpuLimit time.Duration, out *outcome, stderr *headBuffer) (json.RawMessage, error) {
	ws, _ := state.Sys().(syscall.WaitStatus)
	errText := stderr.Bytes()
	if ended != nil {
		ws, errText = ended(ws, errText)
	}
	if ws.Signaled() && ws.Signal() == syscall.SIGSYS {
		return nil, errcode.New(errcode.SandboxViolation,
			"the worker made a system call that the sandbox forbids and was killed (SIGSYS)")
	}
	switch stop {
	case stopCancelled:
		return nil, errcode.New(errcode.Cancelled, "operation cancelled")
	case stopDeadline:
		return nil, errcode.New(errcode.WorkerTimeout, "the worker did not finish before the deadline")
	case stopTimeout:
		return nil, errcode.New(errcode.WorkerTimeout, "the worker did not finish within %v", timeout)
	}
	if out.err != nil {
		return nil, errcode.New(errcode.WorkerProtocol, "invalid worker output: %v", out.err)
	}
	if ws.Signaled() && (ws.Signal() == syscall.SIGXCPU || ws.Signal() == syscall.SIGKILL) &&
		cpuLimit > 0 && state.UserTime()+state.SystemTime() >= cpuLimit-time.Second {
		return nil, errcode.New(errcode.WorkerTimeout, "the worker exceeded its CPU time limit of %v", cpuLimit)
	}
	if out.final && out.werr != nil {
		return nil, out.werr
	}
	if out.final && ws.Exited() && ws.ExitStatus() == 0 {
		return out.result, nil
	}
	msg := "the worker " + describeExit(ws)
	if out.final {
		msg += " after writing its result"
	} else {
		msg += " without a result"
	}
	if s := StderrSummary(errText); s != "" {
		msg += "; stderr: " + s
	}
	return nil, errcode.New(errcode.WorkerCrashed, "%s", msg)
}

func describeExit(ws syscall.WaitStatus) string {
	switch {
	case ws.Signaled():
		return fmt.Sprintf("was killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	}
	return fmt.Sprintf("ended with wait status %#x", uint32(ws))
}

func contextError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return errcode.New(errcode.WorkerTimeout, "the deadline passed before the worker started")
	}
	return errcode.New(errcode.Cancelled, "operation cancelled")
}

// pipes are the worker's standard streams. The child ends are closed in the
// host once the worker has started, so that EOF follows the worker's exit.
type pipes struct {
	stdinR, stdinW   *os.File
	stdoutR, stdoutW *os.File
	stderrR, stderrW *os.File
}

func newPipes() (*pipes, error) {
	var pp pipes
	var err error
	if pp.stdinR, pp.stdinW, err = os.Pipe(); err != nil {
		return nil, err
	}
	if pp.stdoutR, pp.stdoutW, err = os.Pipe(); err != nil {
		pp.closeChild()
		pp.closeHost()
		return nil, err
	}
	if pp.stderrR, pp.stderrW, err = os.Pipe(); err != nil {
		pp.closeChild()
		pp.closeHost()
		return nil, err
	}
	return &pp, nil
}

func (pp *pipes) closeChild() {
	for _, f := range []*os.File{pp.stdinR, pp.stdoutW, pp.stderrW} {
		if f != nil {
			f.Close()
		}
	}
}

func (pp *pipes) closeHost() {
	for _, f := range []*os.File{pp.stdinW, pp.stdoutR, pp.stderrR} {
		if f != nil {
			f.Close()
		}
	}
}

// outcome is what the worker's standard output said.
type outcome struct {
	final  bool            // a result or error line was read
	result json.RawMessage // the result, when final and werr is nil
	werr   *errcode.Error  // the worker's error line
	err    error           // the output broke the protocol
}

// readMessages reads protocol lines from r until EOF or the first violation.
// Progress and warning lines are delivered as they arrive, and a cut line to
// cut (nil: a cut line breaks the protocol).
func readMessages(r io.Reader, progress func(float64), warn func(string), cut func(proto.Cut) error) outcome {
	var out outcome
	lr := &io.LimitedReader{R: r, N: proto.MaxResultBytes + 1}
	br := bufio.NewReaderSize(lr, 64<<10)
	var line []byte
	lineNo, warnings := 0, 0
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			switch {
			case lr.N <= 0:
				out.err = fmt.Errorf("more than %d bytes of output", proto.MaxResultBytes)
			case len(line) > 0:
				out.err = errors.New("output does not end with a newline")
			}
			return out
		}
		if err != nil {
			out.err = fmt.Errorf("reading the output: %w", err)
			return out
		}
		lineNo++
		if out.final {
			out.err = fmt.Errorf("line %d follows the final line", lineNo)
			return out
		}
		m, err := decodeMessage(line)
		if err != nil {
			out.err = fmt.Errorf("line %d: %w", lineNo, err)
			return out
		}
		switch {
		case m.Progress != nil:
			if progress != nil {
				progress(*m.Progress)
			}
		case m.Warning != "":
			if warnings++; warnings > proto.MaxWarnings {
				out.err = fmt.Errorf("more than %d warning lines", proto.MaxWarnings)
				return out
			}
			warn(sanitize(m.Warning))
		case m.Cut != nil:
			err := errors.New("a cut line, which this run does not take")
			if cut != nil {
				err = cut(*m.Cut)
			}
			if err != nil {
				out.err = fmt.Errorf("line %d: %w", lineNo, err)
				return out
			}
		case m.Error != nil:
			out.final, out.werr = true, m.Error
		default:
			out.final, out.result = true, m.Result
		}
		line = nil // the result may alias the old buffer
	}
}

// DecodeMessage decodes one protocol line (with or without its newline) as
// the host does: strictly, within the bounds of its kind.
func DecodeMessage(line []byte) (*proto.Message, error) {
	if !bytes.HasSuffix(line, []byte("\n")) {
		line = append(bytes.Clone(line), '\n')
	}
	return decodeMessage(line)
}

// decodeMessage decodes one line strictly: a JSON object with exactly one known
// field, within the size bound of its kind.
func decodeMessage(line []byte) (*proto.Message, error) {
	body := bytes.TrimSuffix(line, []byte("\n"))
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var m proto.Message
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("not a protocol message: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not a protocol message: data after the JSON object")
	}
	if bytes.Equal(m.Result, []byte("null")) {
		m.Result = nil
	}
	n := 0
	for _, set := range []bool{m.Progress != nil, m.Result != nil, m.Error != nil, m.Warning != "", m.Cut != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("a protocol message sets exactly one field, this one sets %d", n)
	}
	switch {
	case m.Progress != nil:
		if len(line) > proto.MaxProgressLineBytes {
			return nil, fmt.Errorf("progress line longer than %d bytes", proto.MaxProgressLineBytes)
		}
		if p := *m.Progress; !(p >= 0 && p <= 1) {
			return nil, fmt.Errorf("progress %v outside [0,1]", p)
		}
	case m.Warning != "" || m.Cut != nil:
		if len(line) > proto.MaxProgressLineBytes {
			return nil, fmt.Errorf("line longer than %d bytes", proto.MaxProgressLineBytes)
		}
	case m.Error != nil:
		if len(line) > proto.MaxErrorLineBytes {
			return nil, fmt.Errorf("error line longer than %d bytes", proto.MaxErrorLineBytes)
		}
		if !m.Error.Code.FromWorker() {
			return nil, fmt.Errorf("error code %q is not one a worker may send", sanitize(truncate(string(m.Error.Code), 80)))
		}
	}
	return &m, nil
}

// headBuffer keeps the first max bytes written to it and drops the rest. It is
// safe for one writer and concurrent readers.
type headBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *headBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// Bytes returns a copy of what was kept.
func (b *headBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf)
}

// StderrSummary picks the informative part of a worker's standard error for an
// error message: a Go panic or fatal error line when there is one, otherwise
// the last few hundred bytes.
func StderrSummary(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") {
			return sanitize(truncate(strings.TrimSpace(l), 512))
		}
	}
	const tail = 512
	if len(s) > tail {
		s = "..." + s[len(s)-tail:]
	}
	return sanitize(strings.Join(strings.Fields(s), " "))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// sanitize replaces control and non-printable characters, so that text from a
// worker cannot forge log lines or terminal escapes.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return ' '
		}
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}

// HasFinalLine reports whether a worker's complete output has a result or
// error line, whatever else is wrong with it.
func HasFinalLine(out []byte) bool {
	for _, l := range bytes.Split(out, []byte("\n")) {
		if m, err := decodeMessage(append(l, '\n')); err == nil && (m.Result != nil || m.Error != nil) {
			return true
		}
	}
	return false
}

// DecodeOutput reads a worker's complete output from r, as Run reads a local
// worker's standard output, for backends whose worker does not run as a host
// process (the microvm guest). It returns the worker's result, the worker's
// own *errcode.Error, WORKER_PROTOCOL when the output breaks the protocol, or
// WORKER_CRASHED when it has no final line.
func DecodeOutput(r io.Reader, progress func(float64), warn func(string)) (json.RawMessage, error) {
	out := readMessages(r, progress, warn, nil)
	switch {
	case out.err != nil:
		return nil, errcode.New(errcode.WorkerProtocol, "invalid worker output: %v", out.err)
	case out.werr != nil:
		return nil, out.werr
	case out.final:
		return out.result, nil
	}
	return nil, errcode.New(errcode.WorkerCrashed, "the worker stopped without a result")
}
