// Package zstd decodes Zstandard frames (RFC 8878) into a buffer whose size
// is known in advance: a compressed qcow2 cluster. A frame must decode whole
// into the buffer; dictionaries are not supported (qemu uses none).
//
// It is the worker's own decoder rather than a general library: it links no
// encoder, no concurrency and no package initialisation, so a worker that
// never meets a zstd cluster pays nothing for it at start. Where libzstd
// (what qemu-img uses) refuses a frame, the decoder refuses it too, with an
// error that names what was wrong.
package zstd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	frameMagic     = 0xfd2fb528
	skippableMagic = 0x184d2a50 // the low 4 bits are free
	skippableMask  = 0xfffffff0
	// maxWindowLog is libzstd's default limit for decoding
	// (ZSTD_WINDOWLOG_LIMIT_DEFAULT): a frame asking for more is refused.
	maxWindowLog = 27
	// maxBlock bounds what one block holds, compressed or not
	// (ZSTD_BLOCKSIZE_MAX).
	maxBlock = 128 << 10
)

var (
	// ErrTruncated: the input ends inside the frame.
	ErrTruncated = errors.New("the zstd frame is truncated")
	// ErrTooLong: the frame decodes to more bytes than the buffer holds.
	ErrTooLong = errors.New("the zstd frame decompresses past the end of the buffer")
)

func corrupt(format string, args ...any) error {
	return fmt.Errorf("corrupt zstd frame: "+format, args...)
}

// Decoder decodes frames; it keeps its tables and buffers between frames.
// The zero value is ready to use. A Decoder is not safe for concurrent use.
type Decoder struct {
	lits    []byte   // decoded literals of a block
	huf     hufTable // the last Huffman table of the frame
	hasHuf  bool
	seq     [3]fseTable // literal lengths, offsets, match lengths
	hasSeq  [3]bool
	reps    [3]int // repeat offsets
	window  int
	weights [256]byte
	norm    [256]int16
}

// Decode decodes the frame at the start of src into dst and returns how
// many bytes it produced and how many bytes of src the frame takes; what
// follows the frame is left alone. Bytes of dst past those produced may be
// changed. A skippable frame produces nothing. It fails with ErrTooLong
// when the frame would produce more than len(dst) bytes.
func (d *Decoder) Decode(dst, src []byte) (produced, consumed int, err error) {
	if len(src) < 4 {
		return 0, 0, ErrTruncated
	}
	m := binary.LittleEndian.Uint32(src)
	if m&skippableMask == skippableMagic {
		if len(src) < 8 {
			return 0, 0, ErrTruncated
		}
		n := 8 + uint64(binary.LittleEndian.Uint32(src[4:]))
		if n > uint64(len(src)) {
			return 0, 0, ErrTruncated
		}
		return 0, int(n), nil
	}
	if m != frameMagic {
		return 0, 0, fmt.Errorf("not a zstd frame (magic %#08x)", m)
	}
	return d.frame(dst, src)
}

// frame decodes the frame (not a skippable one) at the start of src.
func (d *Decoder) frame(dst, src []byte) (int, int, error) {
	if len(src) < 5 {
		return 0, 0, ErrTruncated
	}
	fhd := src[4]
	p := 5
	if fhd&0x08 != 0 {
		return 0, 0, corrupt("the frame header sets its reserved bit")
	}
	single := fhd&0x20 != 0
	window := 0
	if !single {
		if p >= len(src) {
			return 0, 0, ErrTruncated
		}
		wd := src[p]
		p++
		log := 10 + int(wd>>3)
		window = 1<<log + (1<<log)/8*int(wd&7)
		// libzstd holds the window of a frame that does not say its size
		// to 2^27 bytes; one that says it (and fits) it decodes in one
		// pass, with any window up to 2^31. Above 2^27 we refuse both.
		if log > maxWindowLog || fhd>>6 == 0 && window > 1<<maxWindowLog {
			return 0, 0, fmt.Errorf("the zstd frame needs a window of %d bytes, more than 2^%d", window, maxWindowLog)
		}
	}
	dictLen := [4]int{0, 1, 2, 4}[fhd&3]
	fcsLen := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcsLen == 0 && single {
		fcsLen = 1
	}
	if p+dictLen+fcsLen > len(src) {
		return 0, 0, ErrTruncated
	}
	if dict := leN(src[p : p+dictLen]); dict != 0 {
		return 0, 0, fmt.Errorf("the zstd frame needs dictionary %d", dict)
	}
	p += dictLen
	fcs := leN(src[p : p+fcsLen])
	if fcsLen == 2 {
		fcs += 256
	}
	p += fcsLen
	if fcsLen > 0 && fcs > uint64(len(dst)) {
		return 0, 0, ErrTooLong
	}
	if single {
		window = int(fcs)
	}

	d.hasHuf, d.hasSeq = false, [3]bool{}
	d.reps = [3]int{1, 4, 8}
	d.window = window
	// A frame that does not say its size libzstd decodes block by block
	// through a buffer of its window (ZSTD_decompressStream, as qemu calls
	// it), where no block may decode to more than the window. One that says
	// its size it decodes in one pass, where only the 128 KiB limit holds.
	blockMax := maxBlock
	if fcsLen == 0 {
		blockMax = min(window, maxBlock)
	}
	out := 0
	for last := false; !last; {
		if p+3 > len(src) {
			return 0, 0, ErrTruncated
		}
		bh := int(src[p]) | int(src[p+1])<<8 | int(src[p+2])<<16
		p += 3
		last = bh&1 != 0
		size := bh >> 3
		// Like libzstd (1.5), and unlike RFC 8878, the limit of what a
		// block stores is not lowered to a smaller window; what it decodes
		// to is limited by blockMax.
		if size > maxBlock {
			return 0, 0, corrupt("a block of %d bytes, more than %d", size, maxBlock)
		}
		typ := bh >> 1 & 3
		if typ < 2 && size > blockMax {
			return 0, 0, corrupt("a block of %d bytes in a frame of unknown size with a window of %d", size, blockMax)
		}
		switch typ {
		case 0: // raw
			if p+size > len(src) {
				return 0, 0, ErrTruncated
			}
			if out+size > len(dst) {
				return 0, 0, ErrTooLong
			}
			out += copy(dst[out:], src[p:p+size])
			p += size
		case 1: // RLE
			if p >= len(src) {
				return 0, 0, ErrTruncated
			}
			if out+size > len(dst) {
				return 0, 0, ErrTooLong
			}
			fill(dst[out:out+size], src[p])
			out += size
			p++
		case 2:
			if p+size > len(src) {
				return 0, 0, ErrTruncated
			}
			n, err := d.block(dst[:min(len(dst), out+blockMax)], out, src[p:p+size], len(dst) < out+blockMax)
			if err != nil {
				return 0, 0, err
			}
			out += n
			p += size
		default:
			return 0, 0, corrupt("a block has the reserved type")
		}
	}
	if fcsLen > 0 && uint64(out) != fcs {
		return 0, 0, corrupt("the header says %d bytes, the blocks hold %d", fcs, out)
	}
	if fhd&0x04 != 0 {
		if p+4 > len(src) {
			return 0, 0, ErrTruncated
		}
		if want, got := binary.LittleEndian.Uint32(src[p:]), uint32(xxh64(dst[:out])); want != got {
			return 0, 0, corrupt("content checksum %#08x, the content hashes to %#08x", want, got)
		}
		p += 4
	}
	return out, p, nil
}

// leN is the little-endian value of b (at most 8 bytes).
func leN(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func fill(b []byte, c byte) {
	for i := range b {
		b[i] = c
	}
}

// block decodes the compressed block blk into dst from pos on. dst holds
// the frame's output so far; its end bounds the block's output, and
// shortBuf says that end is the caller's buffer's rather than the block's
// own limit.
func (d *Decoder) block(dst []byte, pos int, blk []byte, shortBuf bool) (int, error) {
	lits, n, err := d.literals(blk)
	if err != nil {
		return 0, err
	}
	nseq, err := d.sequenceHeader(blk[n:])
	if err != nil {
		return 0, err
	}
	tooLong := func() error {
		if shortBuf {
			return ErrTooLong
		}
		return corrupt("a block decodes to more than %d bytes", len(dst)-pos)
	}
	if nseq.count == 0 {
		if pos+len(lits) > len(dst) {
			return 0, tooLong()
		}
		return copy(dst[pos:], lits), nil
	}
	end, err := d.sequences(dst, pos, lits, nseq)
	if err == errBlockFull {
		return 0, tooLong()
	}
	return end - pos, err
}
