package zstd

import "math/bits"

// fseEntry is one state of an FSE decoding table: the symbol it decodes,
// and the next state, base + the next nbits bits of the stream.
type fseEntry struct {
	sym   uint8
	nbits uint8
	base  uint16
}

// fseTable decodes one symbol type; its accuracy is at most 9 bits.
type fseTable struct {
	log uint
	e   [1 << 9]fseEntry
}

// readNCount reads the description of an FSE table (RFC 8878, 4.1.1) from
// the start of in into norm: the normalized counts of symbols 0..n-1, -1
// for a symbol "less than 1". It returns n, the accuracy log and the
// bytes the description takes.
func readNCount(in []byte, norm *[256]int16, maxSym int, maxLog uint) (n int, log uint, used int, err error) {
	r := fwdReader{in: in}
	log = uint(r.read(4)) + 5
	if log > maxLog {
		return 0, 0, 0, corrupt("an FSE table of accuracy %d, more than %d", log, maxLog)
	}
	clear(norm[:maxSym+1])
	remaining := 1<<log + 1
	threshold := 1 << log
	nbits := int(log) + 1
	sym := 0
	prev0 := false
	for remaining > 1 && sym <= maxSym {
		if prev0 {
			for {
				rep := r.read(2)
				sym += rep
				if rep != 3 || sym > maxSym {
					break
				}
			}
			if sym > maxSym {
				break
			}
		}
		maxLow := 2*threshold - 1 - remaining
		count := r.peek(nbits - 1)
		if count < maxLow {
			r.pos += nbits - 1
		} else {
			count = r.peek(nbits)
			if count >= threshold {
				count -= maxLow
			}
			r.pos += nbits
		}
		count--
		if count >= 0 {
			remaining -= count
		} else {
			remaining--
		}
		norm[sym] = int16(count)
		sym++
		prev0 = count == 0
		if remaining < threshold && remaining > 1 {
			nbits = bits.Len(uint(remaining))
			threshold = 1 << (nbits - 1)
		}
	}
	if remaining != 1 {
		return 0, 0, 0, corrupt("an FSE table's counts do not add up to its size")
	}
	if r.used() > len(in) {
		return 0, 0, 0, corrupt("an FSE table's description runs past its end")
	}
	return sym, log, r.used(), nil
}

// build fills t from the normalized counts of n symbols (RFC 8878, 4.1.1:
// the symbols spread over the states, then each state's next states).
func (t *fseTable) build(norm []int16, log uint) error {
	size := 1 << log
	high := size - 1
	var next [256]uint16
	for s, c := range norm {
		if c == -1 {
			t.e[high].sym = uint8(s)
			high--
			next[s] = 1
		} else {
			next[s] = uint16(max(c, 0))
		}
	}
	pos, step, mask := 0, size>>1+size>>3+3, size-1
	for s, c := range norm {
		for range int(c) {
			t.e[pos].sym = uint8(s)
			for pos = (pos + step) & mask; pos > high; pos = (pos + step) & mask {
			}
		}
	}
	if pos != 0 {
		return corrupt("an FSE table does not spread over its states")
	}
	for u := range size {
		s := t.e[u].sym
		ns := next[s]
		next[s]++
		nb := log - uint(bits.Len16(ns)-1)
		t.e[u].nbits = uint8(nb)
		t.e[u].base = uint16(int(ns)<<nb - size)
	}
	t.log = log
	return nil
}

// rle makes t decode sym in every state, reading no bits.
func (t *fseTable) rle(sym uint8) {
	t.log = 0
	t.e[0] = fseEntry{sym: sym}
}
