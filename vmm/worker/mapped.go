package worker

import (
	"runtime"
	"runtime/debug"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
)

// mapper shows what images store plainly in place, through read-only
// mappings of windows of their files: a compare then reads the page cache
// itself, where a pread would first copy it. On a machine whose memory
// bandwidth bounds a safe rebase, that copy is most of its time
// (docs/performance.md).
//
// A window stays mapped while a chunk holds it and may stay mapped when
// released, up to a bound on the address space; a released window's pages
// are unmapped at once (MADV_DONTNEED: the page cache keeps them), so that
// the worker's resident set counts only what a chunk in flight holds.
// Whatever a window cannot serve (a run across a window's end, a file that
// cannot be mapped, no address space left) is read as before.
//
// A file that shrinks while it is mapped faults when the missing page is
// read: whoever reads mapped bytes does it inside read.
type mapper struct {
	mu     sync.Mutex
	wins   map[winKey]*window
	idle   []*window // released windows, least recently released first
	mapped int64     // address space of every window
	failed map[*opened]bool
}

type winKey struct {
	o   *opened
	idx int64
}

type window struct {
	key    winKey
	data   []byte
	refs   int
	lo, hi int // what was handed out since the window was last released
}

// The size of a window (a multiple of every page size), and the bound on the
// address space of all windows together, well within the jail's RLIMIT_AS.
// Tests make them small.
var (
	windowSize int64 = 64 << 20
	mapBudget  int64 = 1 << 30
)

func newMapper() *mapper {
	return &mapper{wins: map[winKey]*window{}, failed: map[*opened]bool{}}
}

// get returns o's file bytes [host, host+n) in place, or as many of them as
// one window holds, and the window, which the caller releases with put. It
// returns nil where no window can show them: the caller reads them instead.
func (m *mapper) get(o *opened, host, n int64) ([]byte, *window) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed[o] || o.file == nil || host < 0 || host >= o.size {
		return nil, nil
	}
	key := winKey{o, host / windowSize}
	w := m.wins[key]
	if w == nil {
		if w = m.newWindow(key); w == nil {
			return nil, nil
		}
	}
	if w.refs == 0 {
		m.unidle(w)
	}
	w.refs++
	lo := int(host - key.idx*windowSize)
	hi := min(lo+int(n), len(w.data))
	if w.lo == w.hi {
		w.lo, w.hi = lo, hi
	} else {
		w.lo, w.hi = min(w.lo, lo), max(w.hi, hi)
	}
	return w.data[lo:hi:hi], w
}

// newWindow maps the window key names, unmapping released windows to make
// room; nil if it cannot.
func (m *mapper) newWindow(key winKey) *window {
	start := key.idx * windowSize
	length := min(windowSize, key.o.size-start)
	for m.mapped+length > mapBudget && len(m.idle) > 0 {
		m.unmap(m.idle[0])
	}
	if m.mapped+length > mapBudget {
		return nil
	}
	data, err := unix.Mmap(int(key.o.file.Fd()), start, int(length), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		m.failed[key.o] = true
		return nil
	}
	w := &window{key: key, data: data}
	m.wins[key] = w
	m.mapped += length
	return w
}

// put releases w: its pages leave the resident set, the window itself stays
// mapped for the next chunk while the address space allows. A fault maps
// more than the page it reads (the pages around it, or a whole large folio of
// the page cache at once): the aligned faultBlock around what was handed out
// leaves too.
func (m *mapper) put(w *window) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w.refs--; w.refs > 0 {
		return
	}
	if w.lo < w.hi {
		lo, hi := w.lo&^(faultBlock-1), min((w.hi+faultBlock-1)&^(faultBlock-1), len(w.data))
		if err := unix.Madvise(w.data[lo:hi], unix.MADV_DONTNEED); err != nil {
			m.unmap(w) // nothing else can give the pages back
			return
		}
		w.lo, w.hi = 0, 0
	}
	m.idle = append(m.idle, w)
}

// faultBlock bounds what one fault maps: a page table's reach (2 MiB with 4
// KiB pages), which a page cache folio does not exceed.
const faultBlock = 2 << 20

func (m *mapper) unidle(w *window) {
	for i, x := range m.idle {
		if x == w {
			m.idle = append(m.idle[:i], m.idle[i+1:]...)
			return
		}
	}
}

// unmap removes a released window.
func (m *mapper) unmap(w *window) {
	m.unidle(w)
	delete(m.wins, w.key)
	m.mapped -= int64(len(w.data))
	_ = unix.Munmap(w.data)
}

// close unmaps every window; nothing may hold one any more.
func (m *mapper) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.wins {
		m.unmap(w)
	}
}

// read runs f, which reads bytes m shows, and turns the fault of a page that
// is no longer in its file (the file became shorter meanwhile) into a
// READ_FAILED error, where it would end the worker. Any other fault stays
// the panic it is.
func (m *mapper) read(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			fault, ok := r.(interface {
				runtime.Error
				Addr() uintptr
			})
			if !ok {
				panic(r)
			}
			name := m.fileAt(fault.Addr())
			if name == "" {
				panic(r)
			}
			err = errcode.New(errcode.ReadFailed, "reading '%s' failed: it became shorter while it was read", name)
		}
	}()
	return f()
}

// fileAt returns the name of the image whose window holds addr, or "".
func (m *mapper) fileAt(addr uintptr) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.wins {
		if start := uintptr(unsafe.Pointer(unsafe.SliceData(w.data))); addr >= start && addr-start < uintptr(len(w.data)) {
			return w.key.o.ref.Name
		}
	}
	return ""
}
