package fs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// How a writer's signals reach a job.
//
// When a process blocked in a FUSE request receives a signal it does not
// block, the kernel sends FUSE_INTERRUPT and go-fuse cancels the request's
// context; it does so once per request, whatever the signal. The kernel then
// keeps the request waiting (killably) for the answer: the caller's system call
// returns only when the server replies, and its signal handlers run after
// that. An interrupt is therefore only a hint, and most signals are not meant
// to stop anything: bash gets SIGCHLD when a background job ends, a terminal
// resize sends SIGWINCH, the Go runtime preempts with SIGURG, timers send
// SIGALRM.
//
// callerContext turns the hint into a decision: after an interrupt it reads
// the caller's pending signals (/proc/<tid>/status: SigPnd for the thread,
// ShdPnd for the thread group, less SigBlk) and cancels only when one of
// terminatingSignals is among them. A signal that would kill the process is
// there as SIGKILL, so every fatal signal counts. Because the kernel sends one
// interrupt per request, the check is repeated while the request lasts: a
// Ctrl-C after a SIGCHLD still cancels.

// terminatingSignals is the set of signals that cancel a job, as a mask of
// /proc's signal sets (bit n-1 for signal n).
var terminatingSignals = sigMask(unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGKILL, unix.SIGPIPE)

func sigMask(sigs ...unix.Signal) uint64 {
	var m uint64
	for _, s := range sigs {
		m |= 1 << (uint(s) - 1)
	}
	return m
}

// signalRecheck is how often a caller's pending signals are read again after
// an interrupt, while its request lasts.
const signalRecheck = 50 * time.Millisecond

// callerContext returns a context for work done on behalf of the FUSE request
// ctx that is cancelled only when the caller has a terminating signal pending.
// stop must be called before the request returns. Every request that may run
// a worker (a lookup that probes, a listing, a generated file, a disk read)
// works under it: a lookup cancelled by the Go runtime's preemption signal
// would otherwise hide an image.
func callerContext(ctx context.Context) (c context.Context, stop context.CancelFunc) {
	c, cancel := context.WithCancel(context.Background())
	caller, ok := fuse.FromContext(ctx)
	if !ok || caller.Pid == 0 {
		// No caller to ask (a caller in another PID namespace is pid 0):
		// an interrupt does not cancel.
		return c, cancel
	}
	// Read what the request holds now: go-fuse reuses it once it returns.
	// The signals are read only after an interrupt; until then the request
	// costs one goroutine waiting on its Done channel (go-fuse's context is
	// not a standard one), which stop ends.
	pid := caller.Pid
	unwatch := context.AfterFunc(ctx, func() {
		tick := time.NewTicker(signalRecheck)
		defer tick.Stop()
		for {
			if terminating(pid) {
				cancel()
				return
			}
			select {
			case <-tick.C:
			case <-c.Done():
				return
			}
		}
	})
	return c, func() {
		unwatch()
		cancel()
	}
}

// terminating reports whether the thread tid has a terminating signal
// pending that it does not block.
func terminating(tid uint32) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	return err == nil && terminatingPending(b)
}

// terminatingPending reports whether the text of /proc/<tid>/status shows a
// terminating signal pending (for the thread or its group) and not blocked.
func terminatingPending(status []byte) bool {
	var pending, blocked uint64
	for _, line := range bytes.Split(status, []byte("\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		set, err := strconv.ParseUint(string(bytes.TrimSpace(value)), 16, 64)
		if err != nil {
			continue
		}
		switch string(name) {
		case "SigPnd", "ShdPnd":
			pending |= set
		case "SigBlk":
			blocked = set
		}
	}
	blocked &^= sigMask(unix.SIGKILL) // cannot be blocked
	return pending&^blocked&terminatingSignals != 0
}
