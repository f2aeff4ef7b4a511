package worker

import (
	"sort"

	"golang.org/x/sys/unix"

	"instarfs/vmm/worker/internal/layer"
)

// fillReq is one buffer to fill with a chain's guest bytes from off on.
type fillReq struct {
	p   []byte
	off int64
}

// A span is a chain's guest bytes from off on: in a buffer, or in place in a
// mapping of the file that stores them (src's, from host on).
type span struct {
	off  int64
	b    []byte
	src  *opened
	host int64
}

// spanIndex returns the index of the span that holds guest offset a. The
// spans cover a.
func spanIndex(spans []span, a int64) int {
	return sort.Search(len(spans), func(i int) bool { return spans[i].off+int64(len(spans[i].b)) > a })
}

// spanAt returns the bytes of spans from guest offset a on, up to b at most.
// The spans cover a.
func spanAt(spans []span, a, b int64) []byte {
	s := spans[spanIndex(spans, a)]
	return s.b[a-s.off : min(b, s.off+int64(len(s.b)))-s.off]
}

// probeBytes is how much of a mapped span nonZeroHead reads.
const probeBytes = 64

// nonZeroHead reports whether the first bytes of spans from guest offset a
// on (up to b) are known not to be all zero, read from the file with pread
// where a span is a mapping: data unlike zeros usually shows it there, and
// the mapping's pages are then never faulted in, nor unmapped again. False
// says nothing: the bytes are zero, in a buffer, or could not be read.
func nonZeroHead(spans []span, a, b int64) bool {
	s := spans[spanIndex(spans, a)]
	if s.src == nil {
		return false
	}
	var head [probeBytes]byte
	n := min(b-a, s.off+int64(len(s.b))-a, probeBytes)
	got, err := unix.Pread(int(s.src.file.Fd()), head[:n], s.host+a-s.off)
	return err == nil && !allZero(head[:max(got, 0)])
}

// preadv is the system call vecReader makes; tests replace it to see short
// reads.
var preadv = unix.Preadv

// maxVec bounds the buffers of one preadv (the kernel's IOV_MAX is 1024).
const maxVec = 1024

// vecReader fills buffers with a chain's guest bytes, as chain.Fill does,
// but reads the runs that one image stores plainly (qcow2 data clusters, not
// compressed; raw files) and that lie back to back in its file with one
// preadv, however far apart they are in guest offsets: a qcow2 image written
// in guest order stores the data of scattered clusters next to each other.
// Whatever else, and any run a preadv reads short, goes through chain.Fill,
// which reports a failure as such.
type vecReader struct {
	chain layer.Stack
	imgs  []*opened // the images of chain, in its order

	img  *opened // the image of the pending run, or nil
	host int64   // where the pending run starts in img's file
	n    int64   // its length
	iov  [][]byte
	reqs []fillReq // the guest offsets of iov's buffers
}

// fill fills every request's buffer.
func (v *vecReader) fill(reqs []fillReq) error {
	for _, r := range reqs {
		if err := v.fillOne(r.p, r.off); err != nil {
			return err
		}
	}
	return v.flush()
}

func (v *vecReader) fillOne(p []byte, off int64) error {
	for len(p) > 0 {
		if off >= v.chain.VirtualSize() {
			clear(p)
			return nil
		}
		depth, e, err := v.chain.Lookup(off, off+int64(len(p)))
		if err != nil {
			return err
		}
		n := e.Length
		img := v.imgs[depth]
		switch {
		case e.Kind != layer.Data:
			clear(p[:n])
		case !img.storedPlainly(e):
			if err := v.chain.Fill(p[:n], off); err != nil {
				return err
			}
		default:
			if v.img != img || v.host+v.n != e.HostOffset || len(v.iov) == maxVec {
				if err := v.flush(); err != nil {
					return err
				}
				v.img, v.host = img, e.HostOffset
			}
			v.iov = append(v.iov, p[:n])
			v.reqs = append(v.reqs, fillReq{p[:n], off})
			v.n += n
		}
		p = p[n:]
		off += n
	}
	return nil
}

// storedPlainly reports whether the image keeps extent e as plain bytes in
// its own file at e.HostOffset (qcow2 data clusters, not compressed; raw
// files), so that a system call can read or copy the run directly.
func (o *opened) storedPlainly(e layer.Extent) bool {
	return e.Kind == layer.Data && !e.Compressed && e.HostOffset >= 0 && o.file != nil &&
		(o.format == "qcow2" || o.format == "raw") && e.HostOffset+e.Length <= o.size
}

// view is fill for bytes that are only compared: the runs an image stores
// plainly are not read but shown in place through m (the windows that show
// them added to *held, for the caller to release), the rest is filled
// into the requests' buffers as fill fills it. It appends to out[:0] the
// spans that cover the requests, in their order.
func (v *vecReader) view(reqs []fillReq, m *mapper, held *[]hold, out []span) ([]span, error) {
	out = out[:0]
	for _, r := range reqs {
		p, off := r.p, r.off
		for len(p) > 0 {
			n := int64(len(p))
			if off < v.chain.VirtualSize() {
				depth, e, err := v.chain.Lookup(off, off+n)
				if err != nil {
					return out, err
				}
				n = e.Length
				if img := v.imgs[depth]; img.storedPlainly(e) {
					if b, h := m.get(img, e.HostOffset, n); b != nil {
						*held = addHold(*held, h)
						out = append(out, span{off, b, img, e.HostOffset})
						p, off = p[len(b):], off+int64(len(b))
						continue
					}
				}
			}
			if err := v.fillOne(p[:n], off); err != nil {
				return out, err
			}
			out = append(out, span{off: off, b: p[:n]})
			p, off = p[n:], off+n
		}
	}
	return out, v.flush()
}

// flush reads the pending run.
func (v *vecReader) flush() error {
	if v.img == nil {
		return nil
	}
	iov, reqs, fd, host, n := v.iov, v.reqs, int(v.img.file.Fd()), v.host, v.n
	v.img, v.iov, v.reqs, v.n = nil, v.iov[:0], v.reqs[:0], 0
	var got int64
	for got < n {
		m, err := preadv(fd, iov, host+got)
		if err == unix.EINTR {
			continue
		}
		if err != nil || m <= 0 {
			break
		}
		got += int64(m)
		for m > 0 && len(iov) > 0 {
			k := min(m, len(iov[0]))
			if iov[0] = iov[0][k:]; len(iov[0]) == 0 {
				iov = iov[1:]
			}
			m -= k
		}
	}
	if got == n {
		return nil
	}
	// Short: the buffers from the first one not filled whole are read
	// again the plain way, which says what went wrong.
	for _, r := range reqs {
		if got >= int64(len(r.p)) {
			got -= int64(len(r.p))
			continue
		}
		got = 0
		if err := v.chain.Fill(r.p, r.off); err != nil {
			return err
		}
	}
	return nil
}
