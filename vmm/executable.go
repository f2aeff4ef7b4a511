package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The worker is an executable of its own, installed next to the program that
// runs it (instarfs and instarfs-worker side by side). The host opens it once,
// when it starts, and starts every worker through /proc/self/fd/N of that
// descriptor, not by its path:
//
//   - a worker started by root runs as a uid of its own (vmm/jail), which may
//     not be allowed to walk the directories above the executable (a 0700
//     home); exec through the descriptor's magic link does not walk them, so
//     only the file itself must be executable by others;
//   - the descriptor is close-on-exec, so the worker does not inherit it: the
//     kernel resolves the new program's path before it closes the
//     close-on-exec descriptors;
//   - its number stays below 64, so the child's descriptor table stays the
//     size the kernel embeds (a larger one costs an RCU grace period on
//     exec), and clear of the numbers the child moves the descriptors it
//     inherits through before exec (see execPath).

// workerFDFloor is the lowest number the worker's descriptor is moved to: a
// command's child inherits a handful of descriptors numbered below 20, so the
// worker's stays clear of where the child moves them (execPath) without a
// duplicate per start, and below 64.
const workerFDFloor = 40

// workerExe is the worker executable UseWorker opened.
type workerExe struct {
	fd  int   // O_PATH, close-on-exec; -1 when err is set
	err error // why it cannot run, naming the path
}

var defaultWorker atomic.Pointer[workerExe]

// UseWorker opens the worker executable at path, once, and makes it what
// every Process whose Path is empty runs. A program that runs workers calls
// it when it starts (cmd/instarfs: the worker next to it; the tests: their
// own binary). A file that is missing or that workers could not execute is
// not an error here, since commands that start no worker do not need it:
// every worker start then fails with SANDBOX_UNAVAILABLE, naming path and
// what is wrong with it.
func UseWorker(path string) {
	w := &workerExe{}
	w.fd, w.err = openWorker(path, os.Geteuid())
	if old := defaultWorker.Swap(w); old != nil && old.fd >= 0 {
		unix.Close(old.fd)
	}
}

// workerError is why the worker executable at Path cannot run.
type workerError struct {
	Path string
	Err  error
}

func (e *workerError) Error() string {
	return fmt.Sprintf("the worker executable %s %v; see docs/troubleshooting.md", e.Path, e.Err)
}

// Reasons for a workerError.
var (
	errWorkerMissing   = errors.New("does not exist: instarfs runs the instarfs-worker installed next to it (`make install` installs both)")
	errWorkerNotFile   = errors.New("is not a regular file")
	errWorkerNoExec    = errors.New("is not executable (chmod 0755)")
	errWorkerNotOthers = errors.New("is not executable by others, as it must be for workers that run as uids of their own (chmod 0755)")
	errWorkerNoexecFS  = errors.New("is on a file system mounted noexec")
	errWorkerRelative  = errors.New("is not an absolute path (the directory of the running program is not known)")
)

// openWorker opens path, which must be absolute, as a worker executable for
// a host of effective uid euid, and checks that its workers can execute it: a regular file with an
// execute bit for the host's uid, or, for root, whose workers run as uids of
// their own, for others; on a file system that allows exec. The descriptor
// is O_PATH (the host needs no read permission) and close-on-exec, and moved
// to workerFDFloor or above.
func openWorker(path string, euid int) (int, error) {
	if !filepath.IsAbs(path) {
		return -1, &workerError{Path: path, Err: errWorkerRelative}
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, &workerError{Path: path, Err: errWorkerMissing}
		}
		return -1, &workerError{Path: path, Err: fmt.Errorf("cannot be opened: %w", err)}
	}
	fail := func(reason error) (int, error) {
		unix.Close(fd)
		return -1, &workerError{Path: path, Err: reason}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(fmt.Errorf("cannot be examined: %w", err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail(errWorkerNotFile)
	}
	switch {
	case euid == 0 && st.Mode&0o001 == 0:
		return fail(errWorkerNotOthers)
	case euid != 0 && int(st.Uid) == euid && st.Mode&0o100 == 0,
		euid != 0 && int(st.Uid) != euid && st.Mode&0o011 == 0:
		return fail(errWorkerNoExec)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err == nil && sfs.Flags&unix.ST_NOEXEC != 0 {
		return fail(errWorkerNoexecFS)
	}
	if fd < workerFDFloor {
		moved, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, workerFDFloor)
		unix.Close(fd)
		if err != nil {
			return -1, &workerError{Path: path, Err: fmt.Errorf("cannot be kept open: %w", err)}
		}
		fd = moved
	}
	return fd, nil
}

// errNoWorker is the start error of a Process with no Path in a program that
// did not call UseWorker.
var errNoWorker = errors.New("no worker executable: the program did not set one (vmm.UseWorker)")

// execPath returns the path the child executes for the worker executable w,
// given the host's descriptors that become the child's 0, 1, 2, ... in
// order, and a function that releases what it opened for that start: a
// duplicate of w's descriptor when the child would replace it (survives).
func (w *workerExe) execPath(passed []int) (string, func(), error) {
	ok, above := survives(w.fd, passed)
	if ok {
		return "/proc/self/fd/" + strconv.Itoa(w.fd), func() {}, nil
	}
	moved, err := unix.FcntlInt(uintptr(w.fd), unix.F_DUPFD_CLOEXEC, above)
	if err != nil {
		return "", nil, err
	}
	return "/proc/self/fd/" + strconv.Itoa(moved), func() { unix.Close(moved) }, nil
}

// survives reports whether descriptor fd still holds the host's file when
// the child execs, given the descriptors that become its 0, 1, 2, ..., and
// the number from which on any descriptor does.
//
// Before exec, Go's child places those descriptors (syscall.forkExec): it
// first moves its error pipe and each descriptor that sits below its target
// to the numbers just above the highest of them (and of their count), then
// puts each onto its target. So fd survives when it is none of the targets
// and below the moves, or above them.
func survives(fd int, passed []int) (bool, int) {
	n, top := len(passed), len(passed)
	for _, p := range passed {
		top = max(top, p)
	}
	above := top + 1 + n + 2 // the moves: at most one per descriptor, the pipe, one skipped
	return fd >= n && (fd < top || fd >= above), above
}

// defaultExecPath returns the path that executes the worker UseWorker chose
// for a child that inherits the standard streams pp and files.
func defaultExecPath(pp *pipes, files []*os.File) (string, func(), error) {
	w := defaultWorker.Load()
	switch {
	case w == nil:
		return "", nil, errNoWorker
	case w.err != nil:
		return "", nil, w.err
	}
	passed := []int{int(pp.stdinR.Fd()), int(pp.stdoutW.Fd()), int(pp.stderrW.Fd())}
	for _, f := range files {
		passed = append(passed, int(f.Fd()))
	}
	return w.execPath(passed)
}
