package layer_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"instarfs/errcode"
	. "instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/layer/layertest"
)

type fake = layertest.Image

const blk = layertest.BlockSize

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

// short is a fake whose ReadAt returns half of what is asked, and err.
type short struct {
	fake
	err error
}

func (s short) ReadAt(p []byte, off int64) (int, error) {
	n, _ := s.fake.ReadAt(p[:len(p)/2], off)
	return n, s.err
}

// eof is a fake whose ReadAt reads everything and says io.EOF, as a ReaderAt
// may at its end.
type eof struct{ fake }

func (e eof) ReadAt(p []byte, off int64) (int, error) {
	n, _ := e.fake.ReadAt(p, off)
	return n, io.EOF
}

// render renders f(off) for the block at each offset of [0, n) as a string.
func render(t *testing.T, n int64, f func(off int64) (string, error)) string {
	t.Helper()
	var b strings.Builder
	for off := int64(0); off < n; off += blk {
		c, err := f(off)
		if err != nil {
			t.Fatalf("at %d: %v", off, err)
		}
		b.WriteString(c)
	}
	return b.String()
}

var kindChar = map[Kind]string{Data: "d", Zero: "z", Unallocated: "u"}

// TestStackEdges runs the queries of a Stack on the chains whose edges the
// worker's readers used to disagree on, block by block: Lookup (depth and
// kind), Fill (the letter read, 0 for zero) and Allocated (y or n), the last
// two also for two blocks past the end of the chain; Allocated asks about the
// images above the last, as commit and rebase ask about those above a base.
func TestStackEdges(t *testing.T) {
	for _, tc := range []struct {
		name      string
		chain     Stack
		lookup    string
		read      string
		allocated string
	}{
		{"a chain of one", Stack{fake("a.0b")}, "0d0u0z0d", "a00b00", "nnnnnn"},
		{"an empty chain", Stack{}, "", "00", "nn"},
		{"unallocated everywhere", Stack{fake("...."), fake("....")}, "1u1u1u1u", "000000", "nnnnyy"},
		{"zero clusters hide the backing", Stack{fake("0.0."), fake("abcd")}, "0z1d0z1d", "0b0d00", "ynynyy"},
		{"past a smaller backing's end", Stack{fake("...."), fake("ab")}, "1d1d0u0u", "ab0000", "nnnnyy"},
		{"past a smaller middle's end", Stack{fake("...."), fake("a."), fake("wxyz")}, "1d2d0u0u", "ax0000", "ynyyyy"},
		{"a larger backing", Stack{fake(".."), fake("abcd")}, "1d1d", "ab00", "nnyy"},
		{"deep", Stack{fake("..a."), fake(".b.."), fake("c..."), fake("...d")}, "2d1d0d3d", "cbad00", "yyynyy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.chain
			size := s.VirtualSize()
			lookup := render(t, size, func(off int64) (string, error) {
				d, e, err := s.Lookup(off, off+blk)
				if err == nil && (e.Start != off || e.Length != blk) {
					err = fmt.Errorf("Lookup(%d, %d) = %+v", off, off+blk, e)
				}
				return fmt.Sprint(d) + kindChar[e.Kind], err
			})
			if lookup != tc.lookup {
				t.Errorf("lookup %s, want %s", lookup, tc.lookup)
			}
			p := make([]byte, size+2*blk)
			if err := s.Fill(p, 0); err != nil {
				t.Fatal(err)
			}
			read := render(t, size+2*blk, func(off int64) (string, error) {
				b := p[off : off+blk]
				if bytes.Count(b, b[:1]) != blk {
					return "", fmt.Errorf("block reads %q", b)
				}
				return strings.ReplaceAll(string(b[:1]), "\x00", "0"), nil
			})
			if read != tc.read {
				t.Errorf("read %s, want %s", read, tc.read)
			}
			above := s[:max(len(s)-1, 0)]
			allocated := render(t, size+2*blk, func(off int64) (string, error) {
				a, n, err := above.Allocated(off, off+blk)
				if err == nil && n != blk {
					err = fmt.Errorf("Allocated(%d, %d) = %v, %d", off, off+blk, a, n)
				}
				return map[bool]string{true: "y", false: "n"}[a], err
			})
			if allocated != tc.allocated {
				t.Errorf("allocated %s, want %s", allocated, tc.allocated)
			}
		})
	}
}

// TestStackShortReads: an image that reads fewer bytes than its extents
// define fails a read of the chain with READ_FAILED, or with the named error
// it gave; one that reads them all and says io.EOF does not fail.
func TestStackShortReads(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chain Stack
		code  errcode.Code // "" for success
	}{
		{"short, no error", Stack{short{fake("ab"), nil}}, errcode.ReadFailed},
		{"short, EOF", Stack{short{fake("ab"), io.EOF}}, errcode.ReadFailed},
		{"short, an I/O error", Stack{short{fake("ab"), errors.New("input/output error")}}, errcode.ReadFailed},
		{"short, a named error", Stack{short{fake("ab"), errcode.New(errcode.Qcow2Corrupt, "bad")}}, errcode.Qcow2Corrupt},
		{"short in the backing", Stack{fake(".."), short{fake("ab"), nil}}, errcode.ReadFailed},
		{"whole with EOF", Stack{eof{fake("ab")}}, ""},
		{"short but not read", Stack{fake("00"), short{fake("ab"), nil}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := make([]byte, tc.chain.VirtualSize())
			err := tc.chain.Fill(p, 0)
			if errcode.Of(err) != tc.code && !(err == nil && tc.code == "") {
				t.Errorf("Fill: %v, want %s", err, tc.code)
			}
			n, err := tc.chain.ReadAt(p, 0)
			if tc.code == "" && (err != nil || n != len(p)) || tc.code != "" && errcode.Of(err) != tc.code {
				t.Errorf("ReadAt = %d, %v, want %s", n, err, tc.code)
			}
		})
	}
}

// TestCompare walks two chains side by side: per block, b where both read
// as zero by their metadata, o or n where only the old or the new one does,
// - where neither does.
func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new Stack
		end      int64 // in blocks
		want     string
		pieces   int
	}{
		{"same chain", Stack{fake("a.0b")}, Stack{fake("a.0b")}, 4, "-bb-", 3},
		{"different", Stack{fake("a..b")}, Stack{fake("..cd")}, 4, "nbo-", 4},
		{"an empty side", Stack{fake("a0.b")}, nil, 4, "nbbn", 3},
		{"both empty", nil, nil, 3, "bbb", 1},
		{"past the end of both", Stack{fake("a")}, Stack{fake("bc")}, 4, "-obb", 3},
		{"through backings", Stack{fake(".."), fake("a0")}, Stack{fake("0."), fake("..")}, 2, "nb", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Compare(tc.old, tc.new, 0, tc.end*blk, nil)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			next := int64(0)
			for _, p := range ps {
				if p.Start != next || p.Length <= 0 || p.Length%blk != 0 {
					t.Fatalf("pieces %+v", ps)
				}
				next = p.End()
				c := map[[2]bool]string{{true, true}: "b", {true, false}: "o", {false, true}: "n", {false, false}: "-"}[[2]bool{p.OldZero, p.NewZero}]
				b.WriteString(strings.Repeat(c, int(p.Length/blk)))
			}
			if b.String() != tc.want || len(ps) != tc.pieces {
				t.Errorf("Compare: %s in %d pieces, want %s in %d", b.String(), len(ps), tc.want, tc.pieces)
			}
		})
	}
}
