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
// A window stays mapped while a chunk holds part of it and may stay mapped
// when released, up to a bound on the address space; the pages of a released
// hold are unmapped at once (MADV_DONTNEED: the page cache keeps them), so
// that the worker's resident set counts only what the chunks in flight hold,
// even while they take turns holding one window.
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
	key  winKey
	data []byte
	refs int // gets not yet put back
}

// A hold is what get handed out of one window, one or more times in a row:
// how many gets, and the range of the window they showed.
type hold struct {
	w      *window
	gets   int
	lo, hi int
}

// addHold appends h to holds, merged into the last hold of the same window.
func addHold(holds []hold, h hold) []hold {
	if k := len(holds) - 1; k >= 0 && holds[k].w == h.w {
		last := &holds[k]
		last.gets += h.gets
		last.lo, last.hi = min(last.lo, h.lo), max(last.hi, h.hi)
		return holds
	}
	return append(holds, h)
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
// one window holds, and the hold that the caller releases with put (holds
// may be merged with addHold first). It returns nil where no window can show
// them: the caller reads them instead.
func (m *mapper) get(o *opened, host, n int64) ([]byte, hold) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed[o] || o.file == nil || host < 0 || host >= o.size {
		return nil, hold{}
	}
	key := winKey{o, host / windowSize}
	w := m.wins[key]
	if w == nil {
		if w = m.newWindow(key); w == nil {
			return nil, hold{}
		}
	}
	if w.refs == 0 {
		m.unidle(w)
	}
	w.refs++
	lo := int(host - key.idx*windowSize)
	hi := min(lo+int(n), len(w.data))
	return w.data[lo:hi:hi], hold{w, 1, lo, hi}
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

// put releases h: its pages leave the resident set, and a window nothing
// holds any more stays mapped for the next chunk while the address space
// allows.
//
// A fault maps more than the page it reads (the pages around it, or a whole
// large folio of the page cache at once), so what leaves is counted in
// aligned faultBlocks: from the one where the hold starts up to the one where
// it ends, which the next chunk, reading on from there, likely reads too
// (its own put takes it); a window nothing holds leaves whole.
func (m *mapper) put(h hold) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := h.w
	w.refs -= h.gets
	lo, hi := h.lo&^(faultBlock-1), h.hi&^(faultBlock-1)
	if w.refs == 0 {
		lo, hi = 0, len(w.data)
	}
	if lo >= hi {
		return
	}
	err := unix.Madvise(w.data[lo:hi], unix.MADV_DONTNEED)
	if w.refs > 0 {
		return
	}
	if err != nil {
		m.unmap(w) // nothing else can give the pages back
		return
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
