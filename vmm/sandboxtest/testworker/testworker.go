// Package testworker is the worker side of the sandbox conformance suite
// (package sandboxtest): operations that end a worker in each way the host
// must tell apart — a result, an error line, a panic, an exit without a
// result, a hang, bad output, a forbidden system call — and operations that
// report what the worker was handed, so that the suite can check a backend
// from the outside.
//
// A backend's test binary is its own worker. When the backend runs the worker
// as a process (the jail runs the executable vmm.UseWorker chose with argv[0]
// proto.WorkerArg0), the test binary chooses itself, and its TestMain hands
// that case to Main with the worker-side confinement the product worker uses:
//
//	func TestMain(m *testing.M) {
//		if os.Args[0] == proto.WorkerArg0 {
//			testworker.Main(jail.Confine)
//		}
//		vmm.UseWorker("/proc/self/exe")
//		os.Exit(m.Run())
//	}
//
// A backend whose worker is not a process of the host, such as a virtual
// machine whose /init is the worker binary, builds the guest of its tests from
// the test binary itself (with CGO_ENABLED=0 a test binary is static): its
// TestMain recognises that it runs as the guest's init, sets the guest up as
// the product's init does (image descriptors at proto.FirstImageFD, in request
// order, read-only where the request says so), and calls Serve in place of the
// product worker's serving loop, with the request and the channel the host
// reads protocol lines from.
package testworker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/jail"
)

// Operations of the test worker, besides proto.OpNoop, proto.OpSandboxProbe and
// proto.OpSandboxViolate, which it serves as the product worker does.
const (
	OpEcho           = "test-echo"             // the request and each image as the worker sees them; see EchoResult
	OpProgress       = "test-progress"         // progress 0.25, 0.5, 1 if asked for (Request.Progress), then the result "done"
	OpError          = "test-error"            // an error line: QCOW2_CORRUPT, ErrorMessage
	OpCrash          = "test-crash"            // panic with CrashMessage
	OpExit           = "test-exit"             // ExitMessage on stderr, exit status 3 without a result
	OpResultThenExit = "test-result-then-exit" // the result "done", then exit status 2
	OpSleep          = "test-sleep"            // progress 0, then sleep for an hour
	OpGarbage        = "test-garbage"          // a line that is not JSON
	OpHuge           = "test-huge"             // one line longer than proto.MaxResultBytes
	OpTwoResults     = "test-two-results"      // two final lines
	OpUnknownField   = "test-unknown-field"    // a line with a field the protocol lacks
	OpNoNewline      = "test-no-newline"       // a result not ended by a newline, then exit 0
	OpForbidden      = "test-forbidden"        // openat("/"): a confined worker is killed
	OpStress         = "test-stress"           // the Go runtime and image I/O at full tilt; see stress
	// OpCut sends the cut lines (proto.Cut) of its arguments, a JSON array,
	// then the result "cut"; the result "not offered" when the request does
	// not set HostCuts.
	OpCut = "test-cut"
	// OpSession begins a session (vmm.Session): the ready document "ready",
	// then one reply per request frame; see session.
	OpSession = "test-session"
)

// Request frames of OpSession, and what the worker does with them.
const (
	FrameEcho      = "echo "     // echo TEXT: a FrameOK reply with TEXT
	FrameShared    = "shared "   // shared N: N bytes 'y' through the shared memory
	FrameError     = "error"     // a FrameError reply: QCOW2_CORRUPT, ErrorMessage
	FrameExit      = "exit"      // ExitMessage on stderr, exit status 3
	FrameSleep     = "sleep"     // sleep for an hour
	FrameForbidden = "forbidden" // openat("/"), then a FrameOK reply
)

// Texts the operations put where the host must report them.
const (
	ErrorMessage = "test image is corrupt"
	CrashMessage = "test worker crash"
	ExitMessage  = "test worker exits with status 3"
)

// EchoOffset is where OpEcho writes EchoMark into every image: the write must
// land in a writable image and fail with EBADF in a read-only one.
const EchoOffset = 4096

// EchoMark is what OpEcho writes at EchoOffset.
const EchoMark = "written by the worker"

// EchoHead is how many bytes of each image OpEcho reports.
const EchoHead = 16

// EchoResult is the result of OpEcho.
type EchoResult struct {
	Request proto.Request `json:"request"`
	Images  []EchoImage   `json:"images"`
}

// EchoImage is one image descriptor as OpEcho found it.
type EchoImage struct {
	Head string `json:"head"` // the first EchoHead bytes
	// WriteErrno names the error of writing EchoMark ("EBADF"), empty when
	// the write and an fdatasync succeeded.
	WriteErrno string `json:"write_errno,omitempty"`
}

// Main is the worker of a backend's test binary started as a worker
// process: it runs confine (the backend's worker-side confinement; nil for
// none), sends its warnings, serves the request on standard input and exits.
func Main(confine func() ([]string, error)) {
	if confine != nil {
		warnings, err := confine()
		if err != nil {
			emitError(os.Stdout, err)
			os.Exit(1)
		}
		for _, w := range warnings {
			emit(os.Stdout, proto.Message{Warning: w})
		}
	}
	os.Exit(Serve(os.Stdin, os.Stdout))
}

// images are the request's image descriptors, kept reachable so that no
// finalizer closes them while an operation uses their numbers.
var images []*os.File

// Serve reads one request from in, runs it on the image descriptors at
// proto.FirstImageFD.. and writes its protocol lines to out, each line in one
// Write. It returns the worker's exit status; some operations end the process
// themselves.
func Serve(in io.Reader, out io.Writer) int {
	var req proto.Request
	dec := json.NewDecoder(in)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		emitError(out, errcode.New(errcode.WorkerProtocol, "decoding the request: %v", err))
		return 1
	}
	for i, im := range req.Images {
		images = append(images, os.NewFile(uintptr(proto.FirstImageFD+i), im.Name))
	}
	result := func(v any) int {
		b, err := json.Marshal(v)
		if err != nil {
			emitError(out, err)
			return 1
		}
		emit(out, proto.Message{Result: b})
		return 0
	}
	switch req.Op {
	case proto.OpNoop:
		return result(struct{}{})
	case proto.OpSandboxProbe:
		return result(jail.RunProbes(req))
	case proto.OpSandboxViolate:
		emitError(out, jail.Violate())
		return 1
	case OpEcho:
		return result(EchoResult{Request: req, Images: echoImages()})
	case OpProgress:
		// As the worker does: progress only when the host shows it.
		for _, p := range []float64{0.25, 0.5, 1} {
			if req.Progress {
				emit(out, proto.Message{Progress: &p})
			}
		}
		return result("done")
	case OpError:
		emitError(out, errcode.New(errcode.Qcow2Corrupt, ErrorMessage))
		return 1
	case OpCrash:
		panic(CrashMessage)
	case OpExit:
		fmt.Fprintln(os.Stderr, ExitMessage)
		return 3
	case OpResultThenExit:
		result("done")
		return 2
	case OpSleep:
		p := 0.0
		emit(out, proto.Message{Progress: &p})
		time.Sleep(time.Hour)
		return 1
	case OpGarbage:
		writeAll(out, []byte("this is not json\n"))
		return 0
	case OpHuge:
		writeAll(out, []byte(`{"result":"`))
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		for i := 0; i <= proto.MaxResultBytes>>20; i++ {
			writeAll(out, chunk)
		}
		writeAll(out, []byte("\"}\n"))
		return 0
	case OpTwoResults:
		result(1)
		return result(2)
	case OpUnknownField:
		writeAll(out, []byte(`{"result":{},"extra":1}`+"\n"))
		return 0
	case OpNoNewline:
		writeAll(out, []byte(`{"result":{}}`))
		return 0
	case OpForbidden:
		unix.Openat(unix.AT_FDCWD, "/", unix.O_RDONLY, 0)
		return result("the forbidden call returned")
	case OpStress:
		if err := stress(); err != nil {
			emitError(out, err)
			return 1
		}
		return result("ok")
	case OpCut:
		if !req.HostCuts {
			return result("not offered")
		}
		var cuts []proto.Cut
		if err := json.Unmarshal(req.Args, &cuts); err != nil {
			emitError(out, errcode.New(errcode.BadArguments, "%v", err))
			return 1
		}
		for _, c := range cuts {
			emit(out, proto.Message{Cut: &c})
		}
		return result("cut")
	case OpSession:
		frames, err := proto.SessionInput(dec, in)
		if err == nil {
			err = session(req, frames, out)
		}
		if err != nil {
			emitError(out, err)
			return 1
		}
		return 0
	}
	emitError(out, errcode.New(errcode.WorkerProtocol, "unknown operation %q", req.Op))
	return 1
}

func emit(out io.Writer, m proto.Message) {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	writeAll(out, append(b, '\n'))
}

func emitError(out io.Writer, err error) {
	var e *errcode.Error
	if !errors.As(err, &e) {
		e = errcode.New(errcode.Internal, "%v", err)
	}
	emit(out, proto.Message{Error: e})
}

// writeAll writes b; a worker whose output the host no longer reads stops.
func writeAll(out io.Writer, b []byte) {
	if _, err := out.Write(b); err != nil {
		os.Exit(4)
	}
}

// session answers request frames until the host closes the input; see the
// Frame constants. It maps the shared memory before its ready line.
func session(req proto.Request, in io.Reader, out io.Writer) error {
	shared, err := proto.WorkerShared(req)
	if err != nil {
		return err
	}
	emit(out, proto.Message{Result: json.RawMessage(`"ready"`)})
	reply := func(status byte, n int, body []byte) {
		frame := binary.BigEndian.AppendUint32([]byte{status}, uint32(n))
		writeAll(out, append(frame, body...))
	}
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			os.Exit(0) // the host ended the session
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(in, body); err != nil {
			os.Exit(1)
		}
		switch req := string(body); {
		case strings.HasPrefix(req, FrameEcho):
			text := strings.TrimPrefix(req, FrameEcho)
			reply(proto.FrameOK, len(text), []byte(text))
		case strings.HasPrefix(req, FrameShared):
			n, _ := strconv.Atoi(strings.TrimPrefix(req, FrameShared))
			n = min(max(n, 0), len(shared))
			copy(shared, bytes.Repeat([]byte("y"), n))
			reply(proto.FrameShared, n, nil)
		case req == FrameError:
			b, _ := json.Marshal(errcode.New(errcode.Qcow2Corrupt, ErrorMessage))
			reply(proto.FrameError, len(b), b)
		case req == FrameExit:
			fmt.Fprintln(os.Stderr, ExitMessage)
			os.Exit(3)
		case req == FrameSleep:
			time.Sleep(time.Hour)
		case req == FrameForbidden:
			unix.Openat(unix.AT_FDCWD, "/", unix.O_RDONLY, 0)
			text := "the forbidden call returned"
			reply(proto.FrameOK, len(text), []byte(text))
		default:
			b, _ := json.Marshal(errcode.New(errcode.WorkerProtocol, "unknown request %q", req))
			reply(proto.FrameError, len(b), b)
		}
	}
}

// echoImages reads the head of every image and writes EchoMark into each.
func echoImages() []EchoImage {
	var r []EchoImage
	for _, f := range images {
		var im EchoImage
		head := make([]byte, EchoHead)
		n, _ := f.ReadAt(head, 0)
		im.Head = string(head[:n])
		_, err := unix.Pwrite(int(f.Fd()), []byte(EchoMark), EchoOffset)
		if err == nil {
			err = unix.Fdatasync(int(f.Fd()))
		}
		if err != nil {
			im.WriteErrno = errnoName(err)
		}
		r = append(r, im)
	}
	return r
}

// deviceEINVAL reports whether err is EINVAL from a call on a block device.
func deviceEINVAL(f *os.File, err error) bool {
	var st unix.Stat_t
	return errors.Is(err, unix.EINVAL) && unix.Fstat(int(f.Fd()), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK
}

func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
	}
	return err.Error()
}

// stress exercises what a real worker does, so that a system call missing
// from a sandbox's allow-list ends the run: concurrent blocking preads (new
// threads), large allocations with forced GC and returns to the OS, timers
// (netpoller), tight loops (asynchronous preemption), os.File use, local time,
// stderr, and the image descriptor calls. It wants a read-only and a writable
// image, in that order.
func stress() error {
	if len(images) != 2 {
		return fmt.Errorf("stress wants a read-only and a writable image, got %d", len(images))
	}
	ro, rw := images[0], images[1]
	if _, err := ro.Stat(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for i := 0; i < 200; i++ {
				if _, err := ro.ReadAt(buf, int64(i%16)*4096); err != nil && !errors.Is(err, io.EOF) {
					errs <- err
					return
				}
			}
		}()
	}
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTimer(time.Duration(g) * time.Millisecond)
			<-t.C
			time.Sleep(time.Millisecond)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadline := time.Now().Add(150 * time.Millisecond)
		x := 0
		for time.Now().Before(deadline) {
			x++
		}
		_ = x
	}()
	var keep [][]byte
	for i := 0; i < 512; i++ {
		b := make([]byte, 1<<20)
		b[0] = byte(i)
		keep = append(keep, b)
		if i%128 == 127 {
			keep = nil
			runtime.GC()
		}
	}
	debug.FreeOSMemory()
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	if _, err := rw.WriteAt([]byte("stress"), 4096); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(rw.Fd())); err != nil {
		return err
	}
	if err := rw.Sync(); err != nil {
		return err
	}
	// A block device (the microvm guest's drives) answers SEEK_HOLE and
	// ftruncate with EINVAL: the kernel's answer, after the filter.
	if _, err := unix.Seek(int(ro.Fd()), 0, unix.SEEK_HOLE); err != nil && !deviceEINVAL(ro, err) {
		return err
	}
	if err := unix.Fallocate(int(rw.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
		return err
	}
	if err := unix.Ftruncate(int(rw.Fd()), 128<<10); err != nil && !deviceEINVAL(rw, err) {
		return err
	}
	fmt.Fprintf(os.Stderr, "stress done at %s\n", time.Now().Format(time.RFC3339))
	return nil
}
