package zstd

import (
	"encoding/binary"
	"math/bits"
)

// backReader reads a bitstream backwards, as zstd writes its Huffman and
// FSE streams: from the last byte, whose highest set bit marks where the
// stream starts, towards the first.
//
// Once the stream's bits are all loaded, refill loads zeros past its start
// (pad counts them), so that after a refill at least 57 bits can always be
// taken. The decoding loops refill only where they might need more than is
// loaded, and take bits without a check; whether they read past the start
// is known afterwards (overread).
type backReader struct {
	in  []byte
	off int    // in[:off] is not loaded yet
	val uint64 // its low n bits are loaded and unread; the next is bit n-1
	n   uint
	pad uint // zero bits loaded past the stream's start, the last ones of val's
}

func (r *backReader) init(in []byte) error {
	if len(in) == 0 {
		return corrupt("an empty bitstream")
	}
	last := in[len(in)-1]
	if last == 0 {
		return corrupt("a bitstream without its start mark")
	}
	hb := uint(bits.Len8(last)) - 1
	*r = backReader{in: in, off: len(in) - 1, val: uint64(last) & (1<<hb - 1), n: hb}
	return nil
}

// refill loads bits until at least 57 are loaded, zeros past the stream's
// start.
func (r *backReader) refill() {
	if k := int(64-r.n) / 8; r.off >= 8 && k > 0 {
		v := binary.LittleEndian.Uint64(r.in[r.off-8:]) >> (64 - 8*k)
		r.val = r.val<<(8*k) | v
		r.n += uint(8 * k)
		r.off -= k
		return
	}
	for r.n <= 56 && r.off > 0 {
		r.off--
		r.val = r.val<<8 | uint64(r.in[r.off])
		r.n += 8
	}
	if r.n <= 56 {
		p := 64 - r.n
		r.val <<= p
		r.n += p
		r.pad += p
	}
}

// take returns the next k bits, which must be loaded.
func (r *backReader) take(k uint) uint64 {
	r.n -= k
	return r.val >> r.n & (1<<k - 1)
}

// look returns the next k bits, which must be loaded, without taking them.
func (r *backReader) look(k uint) uint64 {
	return r.val >> (r.n - k) & (1<<k - 1)
}

// read returns the next k (at most 57) bits.
func (r *backReader) read(k uint) uint64 {
	if r.n < k {
		r.refill()
	}
	return r.take(k)
}

// overread reports whether bits past the stream's start were taken.
func (r *backReader) overread() bool { return r.n < r.pad }

// done reports whether every bit was taken, and none past the start.
func (r *backReader) done() bool { return r.off == 0 && r.n == r.pad }

// fwdReader reads bits forwards, least significant first, as zstd writes
// an FSE table's description; bits past the end read as zeros.
type fwdReader struct {
	in  []byte
	pos int // in bits
}

func (r *fwdReader) read(k int) int {
	v := r.peek(k)
	r.pos += k
	return v
}

func (r *fwdReader) peek(k int) int {
	var w uint64
	i := r.pos / 8
	for j := 0; j < 4 && i+j < len(r.in); j++ {
		w |= uint64(r.in[i+j]) << (8 * j)
	}
	return int(w >> (r.pos % 8) & (1<<k - 1))
}

// used is the number of whole bytes read.
func (r *fwdReader) used() int { return (r.pos + 7) / 8 }
