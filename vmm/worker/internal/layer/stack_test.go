package layer

import (
	"bytes"
	"io"
	"testing"
)

// fake is an image of 4-byte blocks described by a string: 'a'..'z' data
// (the block's bytes are that letter), '0' zero, '.' unallocated.
type fake string

const blk = 4

func (f fake) VirtualSize() int64 { return int64(len(f)) * blk }

func (f fake) Extent(off int64) (Extent, error) {
	i := off / blk
	k := kindOf(f[i])
	e := Extent{Start: off, Length: blk - off%blk, Kind: k, HostOffset: -1}
	for j := i + 1; j < int64(len(f)) && kindOf(f[j]) == k; j++ {
		e.Length += blk
	}
	return e, nil
}

func (f fake) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		c := f[(off+int64(i))/blk]
		if kindOf(c) == Data {
			p[i] = c
		} else {
			p[i] = 0
		}
	}
	return len(p), nil
}

func kindOf(c byte) Kind {
	switch c {
	case '0':
		return Zero
	case '.':
		return Unallocated
	}
	return Data
}

// bounded is a fake that stops its extents at the limit asked.
type bounded struct{ fake }

func (b bounded) ExtentBefore(off, limit int64) (Extent, error) {
	e, err := b.Extent(off)
	e.Length = min(e.Length, limit-off)
	return e, err
}

// withBounds is s with every image bounded.
func withBounds(s Stack) Stack {
	out := make(Stack, len(s))
	for i, l := range s {
		out[i] = bounded{l.(fake)}
	}
	return out
}

// flat is what the chain reads as, one character per block ('0' for zero).
func flat(s Stack) string {
	out := make([]byte, s.VirtualSize()/blk)
	for i := range out {
		out[i] = '0'
		for _, l := range s {
			f, ok := l.(fake)
			if !ok {
				f = l.(bounded).fake
			}
			if i >= len(f) {
				break
			}
			if f[i] != '.' {
				out[i] = f[i]
				break
			}
		}
	}
	return string(out)
}

func TestStack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chain  Stack
		extent string // expected kind per block of Stack.Extent: d or z
	}{
		{"single", Stack{fake("ab.0c")}, "ddzzd"},
		{"backing shows through", Stack{fake("a..0"), fake("bcde")}, "dddz"},
		{"short backing reads zero", Stack{fake("...."), fake("bc")}, "ddzz"},
		{"short middle hides the base", Stack{fake("...."), fake("."), fake("xyzw")}, "dzzz"},
		{"zero hides the backing", Stack{fake("0.0."), fake("abcd")}, "zdzd"},
		{"deep", Stack{fake("..a."), fake(".b.."), fake("c..."), fake("...d")}, "dddd"},
		{"nothing", Stack{fake("....")}, "zzzz"},
	} {
		for _, chain := range []Stack{tc.chain, withBounds(tc.chain)} {
			tc.chain = chain
			t.Run(tc.name, func(t *testing.T) {
				want := flat(tc.chain)
				size := tc.chain.VirtualSize()
				// Every offset and length, so runs split mid-block are covered.
				for off := int64(0); off < size; off++ {
					for n := int64(1); off+n <= size+3; n++ {
						p := make([]byte, n)
						got, err := tc.chain.ReadAt(p, off)
						if off+n > size {
							if err != io.EOF || int64(got) != size-off {
								t.Fatalf("ReadAt(%d, %d) = %d, %v; want %d, EOF", off, n, got, err, size-off)
							}
						} else if err != nil || int64(got) != n {
							t.Fatalf("ReadAt(%d, %d) = %d, %v", off, n, got, err)
						}
						for i := int64(0); i < int64(got); i++ {
							w := want[(off+i)/blk]
							if w == '0' {
								w = 0
							}
							if p[i] != w {
								t.Fatalf("ReadAt(%d, %d)[%d] = %q, want %q", off, n, i, p[i], w)
							}
						}
					}
				}
				var kinds []byte
				for off := int64(0); off < size; {
					e, err := tc.chain.Extent(off)
					if err != nil || e.Start != off || e.Length <= 0 || e.End() > size || e.HostOffset != -1 {
						t.Fatalf("Extent(%d) = %+v, %v", off, e, err)
					}
					for i := int64(0); i < e.Length/blk; i++ {
						kinds = append(kinds, map[Kind]byte{Data: 'd', Zero: 'z'}[e.Kind])
					}
					off = e.End()
				}
				if !bytes.Equal(kinds, []byte(tc.extent)) {
					t.Errorf("extents %s, want %s", kinds, tc.extent)
				}
			})
		}
	}
	if _, err := (Stack{fake("ab")}).Extent(8); err == nil {
		t.Error("Extent past the end succeeded")
	}
}
