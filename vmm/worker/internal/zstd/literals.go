package zstd

import (
	"encoding/binary"
	"math/bits"
)

// maxHufBits is the longest Huffman code (RFC 8878: Max_Number_of_Bits).
const maxHufBits = 11

// hufTable decodes a Huffman stream: indexed by the next nbits bits, each
// entry is a symbol and, above it, the length of its code.
type hufTable struct {
	nbits uint
	e     [1 << maxHufBits]uint16
}

// literals decodes the literals section at the start of blk and returns
// the literals and the section's length.
func (d *Decoder) literals(blk []byte) ([]byte, int, error) {
	if len(blk) == 0 {
		return nil, 0, corrupt("an empty compressed block")
	}
	b0 := int(blk[0])
	kind, format := b0&3, b0>>2&3
	// The header's length by kind (raw and RLE, or Huffman) and format.
	hl := [2][4]int{{1, 2, 1, 3}, {3, 3, 4, 5}}[kind/2][format]
	if len(blk) < hl {
		return nil, 0, corrupt("a literals header past the block's end")
	}
	if kind < 2 { // raw, RLE
		regen := b0 >> 3
		if hl > 1 {
			regen = b0 >> 4
			for i := 1; i < hl; i++ {
				regen |= int(blk[i]) << (8*i - 4)
			}
		}
		if regen > maxBlock {
			return nil, 0, corrupt("%d literals in one block", regen)
		}
		if kind == 0 {
			if hl+regen > len(blk) {
				return nil, 0, corrupt("raw literals past the block's end")
			}
			return blk[hl : hl+regen], hl + regen, nil
		}
		if hl >= len(blk) {
			return nil, 0, corrupt("RLE literals past the block's end")
		}
		lits := d.litBuf(regen)
		fill(lits, blk[hl])
		return lits, hl + 1, nil
	}
	// Compressed, or treeless: with the last Huffman table; one stream in
	// format 0, four in the others.
	streams := 4
	if format == 0 {
		streams = 1
	}
	var v uint64
	for i := hl - 1; i >= 0; i-- {
		v = v<<8 | uint64(blk[i])
	}
	sizeBits := [4]uint{10, 10, 14, 18}[format]
	regen := int(v >> 4 & (1<<sizeBits - 1))
	comp := int(v >> (4 + sizeBits) & (1<<sizeBits - 1))
	if regen > maxBlock {
		return nil, 0, corrupt("%d literals in one block", regen)
	}
	if streams == 4 && regen < 6 {
		return nil, 0, corrupt("%d literals in four streams", regen)
	}
	if hl+comp > len(blk) {
		return nil, 0, corrupt("compressed literals past the block's end")
	}
	data := blk[hl : hl+comp]
	if kind == 2 {
		n, err := d.readHuffman(data)
		if err != nil {
			return nil, 0, err
		}
		data = data[n:]
		d.hasHuf = true
	} else if !d.hasHuf {
		return nil, 0, corrupt("treeless literals without an earlier Huffman table")
	}
	lits := d.litBuf(regen)
	if streams == 1 {
		if err := d.huf.decode(lits, data); err != nil {
			return nil, 0, err
		}
		return lits, hl + comp, nil
	}
	if len(data) < 6 {
		return nil, 0, corrupt("a jump table past the literals' end")
	}
	s1 := int(binary.LittleEndian.Uint16(data))
	s2 := int(binary.LittleEndian.Uint16(data[2:]))
	s3 := int(binary.LittleEndian.Uint16(data[4:]))
	data = data[6:]
	if s1+s2+s3 >= len(data) {
		return nil, 0, corrupt("Huffman streams past the literals' end")
	}
	seg := (regen + 3) / 4
	ins := [4][]byte{data[:s1], data[s1 : s1+s2], data[s1+s2 : s1+s2+s3], data[s1+s2+s3:]}
	for i, in := range ins {
		out := lits[min(i*seg, regen):min((i+1)*seg, regen)]
		if i == 3 {
			out = lits[min(3*seg, regen):]
		}
		if err := d.huf.decode(out, in); err != nil {
			return nil, 0, err
		}
	}
	return lits, hl + comp, nil
}

func (d *Decoder) litBuf(n int) []byte {
	if cap(d.lits) < n {
		d.lits = make([]byte, maxBlock)
	}
	return d.lits[:n]
}

// readHuffman reads a Huffman tree description (RFC 8878, 4.2.1) into d.huf
// and returns its length.
func (d *Decoder) readHuffman(in []byte) (int, error) {
	if len(in) == 0 {
		return 0, corrupt("a Huffman tree description past the literals' end")
	}
	hb := int(in[0])
	var nw, used int
	if hb < 128 {
		used = 1 + hb
		if used > len(in) {
			return 0, corrupt("Huffman weights past the literals' end")
		}
		var err error
		if nw, err = d.fseWeights(in[1:used]); err != nil {
			return 0, err
		}
	} else {
		nw = hb - 127
		used = 1 + (nw+1)/2
		if used > len(in) {
			return 0, corrupt("Huffman weights past the literals' end")
		}
		for i := range nw {
			b := in[1+i/2]
			if i&1 == 0 {
				b >>= 4
			}
			d.weights[i] = b & 15
		}
	}
	var rank [maxHufBits + 2]int
	total := 0
	for _, w := range d.weights[:nw] {
		if w > maxHufBits {
			return 0, corrupt("a Huffman weight of %d", w)
		}
		if w > 0 {
			total += 1 << (w - 1)
		}
		rank[w]++
	}
	if total == 0 {
		return 0, corrupt("Huffman weights that are all zero")
	}
	nbits := bits.Len(uint(total))
	if nbits > maxHufBits {
		return 0, corrupt("Huffman codes of %d bits", nbits)
	}
	rest := 1<<nbits - total
	if rest&(rest-1) != 0 {
		return 0, corrupt("Huffman weights that leave no power of two for the last symbol")
	}
	last := bits.Len(uint(rest))
	d.weights[nw] = byte(last)
	rank[last]++
	if rank[1] < 2 || rank[1]&1 != 0 {
		return 0, corrupt("%d Huffman codes of the longest length", rank[1])
	}
	// Codes of weight 1 (the longest) take the lowest values, in symbol
	// order; each weight w takes 2^(w-1) entries of the table.
	var start [maxHufBits + 2]int
	for w := 1; w <= nbits; w++ {
		start[w+1] = start[w] + rank[w]<<(w-1)
	}
	t := &d.huf
	t.nbits = uint(nbits)
	for s, w := range d.weights[:nw+1] {
		if w == 0 {
			continue
		}
		e := uint16(s) | uint16(nbits+1-int(w))<<8
		n := 1 << (w - 1)
		for i := start[w]; i < start[w]+n; i++ {
			t.e[i] = e
		}
		start[w] += n
	}
	return used, nil
}

// fseWeights decodes FSE-compressed Huffman weights into d.weights and
// returns how many there are: two states take turns until the stream is
// read past its start (RFC 8878, 4.2.1.2).
func (d *Decoder) fseWeights(in []byte) (int, error) {
	n, log, used, err := readNCount(in, &d.norm, 255, 6)
	if err != nil {
		return 0, err
	}
	var t fseTable
	if err := t.build(d.norm[:n], log); err != nil {
		return 0, err
	}
	var r backReader
	if err := r.init(in[used:]); err != nil {
		return 0, err
	}
	states := [2]uint64{r.read(log), r.read(log)}
	count := 0
	for i := 0; ; i ^= 1 {
		if count > 255-2 {
			return 0, corrupt("more than 255 Huffman weights")
		}
		e := t.e[states[i]]
		d.weights[count] = e.sym
		count++
		states[i] = uint64(e.base) + r.read(uint(e.nbits))
		if r.overread() {
			d.weights[count] = t.e[states[i^1]].sym
			return count + 1, nil
		}
	}
}

// decode fills dst with the symbols of the Huffman stream in, which must
// end exactly with them.
func (t *hufTable) decode(dst, in []byte) error {
	var r backReader
	if err := r.init(in); err != nil {
		return err
	}
	for i := range dst {
		if r.n < maxHufBits {
			r.refill()
		}
		e := t.e[r.look(t.nbits)&(1<<maxHufBits-1)]
		r.n -= uint(e >> 8)
		dst[i] = byte(e)
	}
	if r.overread() {
		return corrupt("a Huffman stream ends before its literals")
	}
	if !r.done() {
		return corrupt("a Huffman stream goes on past its literals")
	}
	return nil
}
