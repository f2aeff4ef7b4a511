package worker

import (
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// faultAfter is INSTARFS_FAULT_AFTER_WRITES, a testing aid: when N > 0 the worker
// exits abruptly, as if killed, just before its N-th write to an image (pwrite,
// truncate, hole punch). Crash-consistency tests sweep N over every write of an
// operation.
var faults = newFaultCounter(os.Getenv("INSTARFS_FAULT_AFTER_WRITES"))

type faultCounter struct {
	mu     sync.Mutex
	limit  int64
	writes int64
}

func newFaultCounter(v string) *faultCounter {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		n = 0
	}
	return &faultCounter{limit: n}
}

// before counts one write and dies instead of doing it when it is the N-th.
func (c *faultCounter) before() {
	c.mu.Lock()
	c.writes++
	if c.limit > 0 && c.writes >= c.limit {
		unix.Exit(99) // no deferred cleanup, no flush: as under kill -9
	}
	c.mu.Unlock()
}

// Writes reports how many writes the worker has done so far.
func (c *faultCounter) Writes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// ImageFile is an image descriptor opened for writing. Every change to the
// image goes through it, so that fault injection sees each one.
type ImageFile struct {
	*os.File
}

func (f ImageFile) WriteAt(p []byte, off int64) (int, error) {
	faults.before()
	n, err := f.File.WriteAt(p, off)
	devices.wrote(f.File, off+int64(n))
	return n, err
}

func (f ImageFile) Truncate(size int64) error {
	faults.before()
	if devices.truncate(f.File, size) {
		return nil
	}
	return f.File.Truncate(size)
}

// Cut shortens the file to size and makes that durable.
func (f ImageFile) Cut(size int64) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Datasync()
}

// PunchHole deallocates [off, off+n) without changing the file's size.
func (f ImageFile) PunchHole(off, n int64) error {
	faults.before()
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// Datasync makes the file's data durable (fdatasync).
func (f ImageFile) Datasync() error {
	return unix.Fdatasync(int(f.Fd()))
}

// startWriteback asks the kernel to start writing f's dirty pages back,
// without waiting for them (sync_file_range with SYNC_FILE_RANGE_WRITE). It
// makes nothing durable and orders nothing; it only lets a later fdatasync
// find less to do. Failure is harmless and ignored.
func startWriteback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

// writeback starts the writeback of one file on a goroutine of its own: the
// kernel submits the dirty pages in the calling thread, which then works
// for the disk while the copy could go on. start asks for one writeback
// (one asked for and not begun yet covers it); stop waits for the one under
// way and ends the goroutine.
type writeback struct {
	kick chan struct{}
	done chan struct{}
}

func newWriteback(f *os.File) *writeback {
	w := &writeback{kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for range w.kick {
			startWriteback(f)
		}
	}()
	return w
}

func (w *writeback) start() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *writeback) stop() {
	close(w.kick)
	<-w.done
}
