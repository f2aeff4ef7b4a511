package diskview

import (
	"context"
	"sync"

	"instarfs/proto"
)

// chunkBytes is what one read-ahead asks the worker for: its largest read.
const chunkBytes = proto.MaxDiskRead

// readahead serves a sequential reader of a chain. The kernel asks for
// 128 KiB at a time; the worker answers a whole chunk in one round trip, the
// next requests are served from it, and while they are, the next chunk is
// already being read: the worker works while the kernel copies.
//
// It keeps at most two chunks, and none once the chain is idle.
type readahead struct {
	mu   sync.Mutex
	cur  chunk  // the chunk being served
	pend *chunk // the next chunk, being read or read
	next int64  // where a sequential reader reads next
	free []byte // a buffer to reuse
}

// chunk is the bytes [off, off+len(buf)) of the disk, once done is closed
// and err is nil.
type chunk struct {
	off  int64
	buf  []byte
	done chan struct{}
	err  error
}

func (c *chunk) holds(off int64) bool { return off >= c.off && off < c.off+int64(len(c.buf)) }

// readAt fills p with the disk's bytes at off.
func (ra *readahead) readAt(ctx context.Context, h *Handle, p []byte, off int64) error {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if err := h.p.revokedErr(h.e); err != nil {
		return err // the chunks kept are stale
	}
	for len(p) > 0 {
		if ra.cur.holds(off) {
			n := copy(p, ra.cur.buf[off-ra.cur.off:])
			p, off = p[n:], off+int64(n)
			if off >= ra.cur.off+int64(len(ra.cur.buf))/2 {
				ra.prefetch(h, ra.cur.off+int64(len(ra.cur.buf)))
			}
			continue
		}
		if c := ra.pend; c != nil && (off == ra.next || c.off == off) {
			<-c.done
			ra.pend = nil
			ra.recycle(ra.cur.buf)
			ra.cur = chunk{}
			if c.err != nil {
				ra.recycle(c.buf)
				return c.err
			}
			if c.holds(off) {
				ra.cur = *c
				continue
			}
			ra.recycle(c.buf)
		}
		if off == ra.next && len(p) < chunkBytes {
			// Sequential: read a chunk from here, and start on the next.
			buf := ra.buffer(h, off)
			if err := h.read(ctx, buf, off); err != nil {
				ra.recycle(buf)
				return err
			}
			ra.recycle(ra.cur.buf)
			ra.cur = chunk{off: off, buf: buf}
			continue
		}
		n := min(len(p), chunkBytes)
		if err := h.read(ctx, p[:n], off); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	ra.next = off
	return nil
}

// prefetch starts reading the chunk at off, unless one is pending or off is
// the end of the disk. It is called with mu held.
func (ra *readahead) prefetch(h *Handle, off int64) {
	if ra.pend != nil || off >= h.e.size {
		return
	}
	c := &chunk{off: off, buf: ra.buffer(h, off), done: make(chan struct{})}
	ra.pend = c
	go func() {
		defer close(c.done)
		// Not the reader's ctx: an interrupted reader must not fail the
		// chunk the next read waits for.
		c.err = h.read(context.Background(), c.buf, c.off)
	}()
}

// buffer returns a chunk buffer for the chunk at off.
func (ra *readahead) buffer(h *Handle, off int64) []byte {
	buf := ra.free
	ra.free = nil
	if buf == nil {
		buf = make([]byte, chunkBytes)
	}
	return buf[:min(int64(cap(buf)), h.e.size-off)]
}

func (ra *readahead) recycle(buf []byte) {
	if buf != nil {
		ra.free = buf[:cap(buf)]
	}
}

// drop frees the chunks of an idle chain, unless a reader or a read-ahead
// is busy with them.
func (ra *readahead) drop() {
	if !ra.mu.TryLock() {
		return
	}
	defer ra.mu.Unlock()
	if ra.pend != nil {
		select {
		case <-ra.pend.done:
		default:
			return
		}
	}
	ra.cur, ra.pend, ra.free = chunk{}, nil, nil
}
