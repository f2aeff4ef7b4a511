package zstd

import (
	"encoding/binary"
	"math/bits"
)

// backReader reads a bitstream backwards, as zstd writes its Huffman and
// FSE streams: from the last byte, whose highest set bit marks where the
// stream starts, towards the first. Bits past the start read as zeros and
// are counted in over.
type backReader struct {
	in   []byte
	off  int    // in[:off] is not loaded yet
	val  uint64 // its low n bits are loaded and unread; the next is bit n-1
	n    uint
	over uint
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
}

// read returns the next k (at most 56) bits.
func (r *backReader) read(k uint) uint64 {
	if r.n < k {
		r.refill()
		if r.n < k {
			v := (r.val & (1<<r.n - 1)) << (k - r.n)
			r.over += k - r.n
			r.val, r.n = 0, 0
			return v
		}
	}
	r.n -= k
	return r.val >> r.n & (1<<k - 1)
}

// peek returns the next k bits without reading them.
func (r *backReader) peek(k uint) uint64 {
	if r.n < k {
		r.refill()
		if r.n < k {
			return (r.val & (1<<r.n - 1)) << (k - r.n)
		}
	}
	return r.val >> (r.n - k) & (1<<k - 1)
}

// skip reads k bits that peek returned; false if the stream has fewer.
func (r *backReader) skip(k uint) bool {
	if r.n < k {
		return false // peek has refilled
	}
	r.n -= k
	return true
}

// done reports whether every bit was read, and none past the start.
func (r *backReader) done() bool { return r.n == 0 && r.off == 0 && r.over == 0 }

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
