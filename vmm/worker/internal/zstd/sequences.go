package zstd

import "errors"

// The codes of literal lengths, offsets and match lengths, in the order of
// the compression modes byte and of d.seq.
const (
	llCode = iota
	ofCode
	mlCode
)

var (
	seqMaxSym = [3]int{35, 31, 52}
	seqMaxLog = [3]uint{9, 8, 9}
	// The predefined distributions (RFC 8878, 3.1.1.3.2.2).
	seqPredefLog = [3]uint{6, 5, 6}
	seqPredef    = [3][]int16{
		{4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1, -1, -1, -1, -1},
		{1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1},
		{1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1},
	}
	// Baselines and extra bits of literal length codes 16.. and match
	// length codes 32.. (below them a code is its own value, or value+3).
	llBase = [...]uint32{16, 18, 20, 22, 24, 28, 32, 40, 48, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536}
	llBits = [...]uint8{1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	mlBase = [...]uint32{35, 37, 39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027, 2051, 4099, 8195, 16387, 32771, 65539}
	mlBits = [...]uint8{1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
)

// errBlockFull: the sequences produce more than the block's output holds.
var errBlockFull = errors.New("block full")

// seqSection is a sequences section whose header has been read.
type seqSection struct {
	count  int
	stream []byte
}

// sequenceHeader reads the header of the sequences section in and sets up
// d.seq for it.
func (d *Decoder) sequenceHeader(in []byte) (seqSection, error) {
	if len(in) == 0 {
		return seqSection{}, corrupt("a block without its sequences section")
	}
	var s seqSection
	p := 1
	switch b0 := int(in[0]); {
	case b0 == 0:
		if len(in) != 1 {
			return s, corrupt("no sequences, but %d more bytes", len(in)-1)
		}
		return s, nil
	case b0 < 128:
		s.count = b0
	case b0 < 255:
		if len(in) < 2 {
			return s, corrupt("a sequences header past the block's end")
		}
		s.count, p = (b0-128)<<8+int(in[1]), 2
	default:
		if len(in) < 3 {
			return s, corrupt("a sequences header past the block's end")
		}
		s.count, p = int(in[1])+int(in[2])<<8+0x7f00, 3
	}
	if p >= len(in) {
		return s, corrupt("a sequences header past the block's end")
	}
	modes := in[p]
	p++
	if modes&3 != 0 {
		return s, corrupt("the sequences' compression modes set reserved bits")
	}
	for c := range 3 {
		t := &d.seq[c]
		switch modes >> (6 - 2*c) & 3 {
		case 0:
			if err := t.build(seqPredef[c], seqPredefLog[c]); err != nil {
				return s, err
			}
		case 1:
			if p >= len(in) {
				return s, corrupt("an RLE code past the block's end")
			}
			if int(in[p]) > seqMaxSym[c] {
				return s, corrupt("RLE code %d of sequence code %d", in[p], c)
			}
			t.rle(in[p])
			p++
		case 2:
			n, log, used, err := readNCount(in[p:], &d.norm, seqMaxSym[c], seqMaxLog[c])
			if err != nil {
				return s, err
			}
			if err := t.build(d.norm[:n], log); err != nil {
				return s, err
			}
			p += used
		case 3:
			if !d.hasSeq[c] {
				return s, corrupt("a repeated sequence table without an earlier one")
			}
		}
		d.hasSeq[c] = true
	}
	s.stream = in[p:]
	return s, nil
}

// sequences decodes and executes the sequences of s into dst from pos on,
// taking literals from lits, and returns where the output ends. Offsets may
// reach back to the start of dst (the frame's first byte).
func (d *Decoder) sequences(dst []byte, pos int, lits []byte, s seqSection) (int, error) {
	var r backReader
	if err := r.init(s.stream); err != nil {
		return 0, err
	}
	ll, of, ml := &d.seq[llCode], &d.seq[ofCode], &d.seq[mlCode]
	sll, sof, sml := r.read(ll.log), r.read(of.log), r.read(ml.log)
	reps := &d.reps
	lp := 0
	const states = uint64(len(fseTable{}.e) - 1) // a state is below the table's size
	for i := range s.count {
		sll, sof, sml = sll&states, sof&states, sml&states
		llc, ofc, mlc := ll.e[sll].sym, of.e[sof].sym, ml.e[sml].sym
		// Refilled where the bits to take next might not be loaded: an
		// offset code's at most 31 extra bits, the lengths' at most 16
		// each, the states' at most 9 each.
		if r.n < 31 {
			r.refill()
		}
		ofv := 1<<ofc + int(r.take(uint(ofc)))
		if r.n < 32 {
			r.refill()
		}
		mlv := int(mlc) + 3
		if mlc >= 32 {
			mlv = int(mlBase[mlc-32]) + int(r.take(uint(mlBits[mlc-32])))
		}
		llv := int(llc)
		if llc >= 16 {
			llv = int(llBase[llc-16]) + int(r.take(uint(llBits[llc-16])))
		}
		var off int
		if ofv > 3 {
			off = ofv - 3
			reps[0], reps[1], reps[2] = off, reps[0], reps[1]
		} else {
			idx := ofv - 1
			if llv == 0 {
				idx++
			}
			switch idx {
			case 0:
				off = reps[0]
			case 1:
				off = reps[1]
				reps[0], reps[1] = off, reps[0]
			case 2:
				off = reps[2]
				reps[0], reps[1], reps[2] = off, reps[0], reps[1]
			case 3:
				off = reps[0] - 1
				reps[0], reps[1], reps[2] = off, reps[0], reps[1]
			}
		}
		if i+1 < s.count {
			if r.n < 27 {
				r.refill()
			}
			e := ll.e[sll]
			sll = uint64(e.base) + r.take(uint(e.nbits))
			e = ml.e[sml]
			sml = uint64(e.base) + r.take(uint(e.nbits))
			e = of.e[sof]
			sof = uint64(e.base) + r.take(uint(e.nbits))
		}
		if r.overread() {
			return 0, corrupt("the sequences' bitstream ends before sequence %d of %d", i+1, s.count)
		}
		if llv > len(lits)-lp {
			return 0, corrupt("sequence %d takes more literals than the block has", i+1)
		}
		if llv+mlv > len(dst)-pos {
			return 0, errBlockFull
		}
		// Short literals and matches are copied 16 bytes at a time where
		// dst (and lits) have room past them: what lands past the copy is
		// written over by what follows.
		if llv <= 16 && lp+16 <= cap(lits) && pos+16 <= len(dst) {
			*(*[16]byte)(dst[pos:]) = *(*[16]byte)(lits[lp : lp+16])
			pos += llv
		} else {
			pos += copy(dst[pos:], lits[lp:lp+llv])
		}
		lp += llv
		if off <= 0 || off > pos || off > d.window {
			return 0, corrupt("sequence %d copies from offset %d, with %d bytes decoded", i+1, off, pos)
		}
		src, end := pos-off, pos+mlv
		if off >= 16 && end+16 <= len(dst) {
			for ; pos < end; pos, src = pos+16, src+16 {
				*(*[16]byte)(dst[pos:]) = *(*[16]byte)(dst[src:])
			}
			pos = end
			continue
		}
		// An offset shorter than the match repeats the bytes it reaches:
		// each copy doubles what can be copied next.
		for pos < end {
			pos += copy(dst[pos:end], dst[src:pos])
		}
	}
	if !r.done() {
		return 0, corrupt("the sequences' bitstream goes on past its last sequence")
	}
	if len(lits)-lp > len(dst)-pos {
		return 0, errBlockFull
	}
	return pos + copy(dst[pos:], lits[lp:]), nil
}
