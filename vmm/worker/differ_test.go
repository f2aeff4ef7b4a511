package worker

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
)

// blocks is an image of 8-byte units described by a string: a letter is data
// (the unit's bytes are that letter), '0' zero, '.' unallocated, '!' data
// that cannot be read.
type blocks string

const unit = 8

func (b blocks) VirtualSize() int64 { return int64(len(b)) * unit }

func (b blocks) kind(i int64) layer.Kind {
	switch b[i] {
	case '0':
		return layer.Zero
	case '.':
		return layer.Unallocated
	}
	return layer.Data
}

func (b blocks) Extent(off int64) (layer.Extent, error) {
	i := off / unit
	return layer.Extent{Start: off, Length: (i+1)*unit - off, Kind: b.kind(i), HostOffset: -1}, nil
}

func (b blocks) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		c := b[(off+int64(i))/unit]
		if c == '!' {
			return i, errors.New("unreadable")
		}
		p[i] = 0
		if b.kind((off+int64(i))/unit) == layer.Data {
			p[i] = c
		}
	}
	return len(p), nil
}

// recorder is a layer.Writer that notes its writes as "off:bytes".
type recorder struct{ writes []string }

func (r *recorder) WriteData(off int64, p []byte) error {
	r.writes = append(r.writes, fmt.Sprintf("%d:%s", off, strings.ReplaceAll(string(p), "\x00", "0")))
	return nil
}
func (r *recorder) WriteZeroes(off, n int64, _ layer.ZeroFlags) error {
	return errors.New("unexpected WriteZeroes")
}
func (r *recorder) Flush() error  { return nil }
func (r *recorder) Finish() error { return nil }

// TestDiffer: the old chain's bytes are written where the image does not
// define a unit and the chains read differently.
func TestDiffer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		img      layer.Image
		old, new layer.Stack
		unit     int64
		whole    bool
		want     string // the writes, space-separated
	}{
		{"only where the image defines nothing", blocks("a.0."), layer.Stack{blocks("bcde")}, layer.Stack{blocks("xcye")}, unit, false,
			""},
		{"where the chains differ", blocks("...."), layer.Stack{blocks("bcde")}, layer.Stack{blocks("xcye")}, unit, false,
			"0:bbbbbbbb 16:dddddddd"},
		{"onto nothing", blocks("..."), layer.Stack{blocks("b.0")}, nil, unit, false,
			"0:bbbbbbbb"},
		{"from nothing", blocks("..."), nil, layer.Stack{blocks("b.0")}, unit, false,
			"0:00000000"},
		{"past a smaller old chain", blocks("..."), layer.Stack{blocks("b")}, layer.Stack{blocks("bcd")}, unit, false,
			"8:00000000 16:00000000"},
		{"units of two blocks", blocks("...."), layer.Stack{blocks("bcde")}, layer.Stack{blocks("bxde")}, 2 * unit, false,
			"0:bbbbbbbbcccccccc"},
		{"a last unit cut by the size", blocks("..."), layer.Stack{blocks("bcd")}, nil, 2 * unit, false,
			"0:bbbbbbbbcccccccc 16:dddddddd"},
		{"a last unit written whole", blocks("..."), layer.Stack{blocks("bcd")}, nil, 2 * unit, true,
			"0:bbbbbbbbcccccccc 16:dddddddd00000000"},
		{"zero by metadata on both sides", blocks(".."), layer.Stack{blocks("00"), blocks("!!")}, layer.Stack{blocks(".0")}, unit, false,
			""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w recorder
			d := &differ{img: tc.img, w: &w, old: tc.old, unit: tc.unit, whole: tc.whole}
			if err := d.copy(0, tc.img.VirtualSize(), tc.new); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(w.writes, " "); got != tc.want {
				t.Errorf("writes %q, want %q", got, tc.want)
			}
			if d.units != int64(len(w.writes)) {
				t.Errorf("%d units counted, %d written", d.units, len(w.writes))
			}
		})
	}
}

// TestDifferFailsBeforeWriting: an image whose extents cannot all be looked
// up fails before anything is written.
func TestDifferFailsBeforeWriting(t *testing.T) {
	var w recorder
	d := &differ{img: badTail{blocks("...")}, w: &w, old: layer.Stack{blocks("bcd")}, unit: unit}
	if err := d.copy(0, unit, nil); err == nil || len(w.writes) > 0 {
		t.Errorf("copy = %v after writes %q; want an error and no write", err, w.writes)
	}
}

// badTail is an image whose last extent cannot be looked up.
type badTail struct{ blocks }

func (b badTail) Extent(off int64) (layer.Extent, error) {
	if off >= b.VirtualSize()-unit {
		return layer.Extent{}, io.ErrUnexpectedEOF
	}
	return b.blocks.Extent(off)
}

// TestDifferReadFails: an old chain that cannot be read where it matters
// fails the copy.
func TestDifferReadFails(t *testing.T) {
	var w recorder
	d := &differ{img: blocks(".."), w: &w, old: layer.Stack{blocks("a!")}, unit: unit}
	if err := d.copy(0, 2*unit, nil); errcode.Of(err) != errcode.ReadFailed {
		t.Errorf("copy = %v, want %s", err, errcode.ReadFailed)
	}
}
