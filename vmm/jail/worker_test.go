package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/vmm"
)

// Test-only operations of the test worker.
const (
	opCrash           = "test-crash"             // panic
	opExit            = "test-exit"              // exit 3 without a result
	opSigkill         = "test-sigkill"           // kill itself with SIGKILL
	opSleep           = "test-sleep"             // one progress line, then sleep for an hour
	opGarbage         = "test-garbage"           // a line that is not JSON
	opHuge            = "test-huge"              // more than vmm.MaxResultBytes
	opTwoResults      = "test-two-results"       // two final lines
	opUnknownField    = "test-unknown-field"     // a line with an unknown field
	opForbidden       = "test-forbidden"         // openat: killed by seccomp
	opError           = "test-error"             // a QCOW2_CORRUPT error line
	opProgress        = "test-progress"          // progress lines, then a result
	opResultThenCrash = "test-result-then-crash" // a result, then exit 2
	opStress          = "test-stress"            // exercise the Go runtime under the filter
)

func TestMain(m *testing.M) {
	if os.Args[0] == vmm.WorkerArg0 {
		testWorker()
		os.Exit(0)
	}
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_GETPID, 0, 0, 0); e == syscall.ENOTSUP {
		fmt.Fprintln(os.Stderr, "vmm/jail tests need a binary built with CGO_ENABLED=0")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// stdout is written with raw write(2) calls, one line each.
func emit(m vmm.Message) {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	writeLine(b)
}

func writeLine(b []byte) {
	b = append(b, '\n')
	for len(b) > 0 {
		n, err := unix.Write(1, b)
		if err != nil {
			os.Exit(4)
		}
		b = b[n:]
	}
}

func emitResult(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	emit(vmm.Message{Result: b})
}

func emitError(err error) {
	e, ok := err.(*errcode.Error)
	if !ok {
		e = errcode.New(errcode.Internal, "%v", err)
	}
	emit(vmm.Message{Error: e})
}

// testWorker is the worker side of these tests: what vmm/worker.Main does in
// the product, with test operations added.
func testWorker() {
	warnings, err := Confine()
	if err != nil {
		emitError(err)
		os.Exit(1)
	}
	for _, w := range warnings {
		emit(vmm.Message{Warning: w})
	}
	var req vmm.Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		emitError(errcode.New(errcode.BadArguments, "decoding the request: %v", err))
		os.Exit(1)
	}
	switch req.Op {
	case vmm.OpNoop:
		emitResult(struct{}{})
	case vmm.OpSandboxProbe:
		emitResult(RunProbes(req))
	case vmm.OpSandboxViolate:
		emitError(Violate())
	case opCrash:
		panic("test worker crash")
	case opExit:
		os.Exit(3)
	case opSleep:
		p := 0.0
		emit(vmm.Message{Progress: &p})
		time.Sleep(time.Hour)
	case opGarbage:
		writeLine([]byte("this is not json"))
	case opHuge:
		// One result line longer than the whole output bound.
		chunk := []byte(strings.Repeat("x", 1<<20))
		unix.Write(1, []byte(`{"result":"`))
		for i := 0; i <= vmm.MaxResultBytes>>20; i++ {
			if _, err := unix.Write(1, chunk); err != nil {
				os.Exit(4)
			}
		}
		writeLine([]byte(`"}`))
	case opTwoResults:
		emitResult(1)
		emitResult(2)
	case opUnknownField:
		writeLine([]byte(`{"result":{},"extra":1}`))
	case opForbidden:
		unix.Openat(unix.AT_FDCWD, "/", unix.O_RDONLY, 0)
		emitResult("the forbidden call returned")
	case opError:
		emitError(errcode.New(errcode.Qcow2Corrupt, "test image is corrupt"))
	case opProgress:
		for _, p := range []float64{0.25, 0.5, 1} {
			emit(vmm.Message{Progress: &p})
		}
		emitResult("done")
	case opResultThenCrash:
		emitResult("done")
		os.Exit(2)
	case opStress:
		if err := stress(req); err != nil {
			emitError(err)
			return
		}
		emitResult("ok")
	default:
		emitError(errcode.New(errcode.BadArguments, "unknown op %q", req.Op))
	}
}

// images are the stress test's image files, kept reachable so that no
// finalizer closes their descriptors.
var images []*os.File

// stress exercises what a real worker does, so that a system call missing from
// the allow-list kills it: concurrent blocking preads (new threads), large
// allocations with forced GC and returns to the OS, timers (netpoller), tight
// loops (asynchronous preemption), os.File use, local time, stderr, and the
// image descriptor calls.
func stress(req vmm.Request) error {
	for i := range req.Images {
		images = append(images, os.NewFile(uintptr(vmm.FirstImageFD+i), req.Images[i].Name))
	}
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
	if _, err := unix.Seek(int(ro.Fd()), 0, unix.SEEK_HOLE); err != nil {
		return err
	}
	if err := unix.Fallocate(int(rw.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
		return err
	}
	if err := rw.Truncate(128 << 10); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "stress done at %s\n", time.Now().Format(time.RFC3339))
	return nil
}
