package worker

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/layer/layertest"
)

type blocks = layertest.Image

const unit = layertest.BlockSize

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
			"0:bbbb 8:dddd"},
		{"onto nothing", blocks("..."), layer.Stack{blocks("b.0")}, nil, unit, false,
			"0:bbbb"},
		{"from nothing", blocks("..."), nil, layer.Stack{blocks("b.0")}, unit, false,
			"0:0000"},
		{"past a smaller old chain", blocks("..."), layer.Stack{blocks("b")}, layer.Stack{blocks("bcd")}, unit, false,
			"4:0000 8:0000"},
		{"units of two blocks", blocks("...."), layer.Stack{blocks("bcde")}, layer.Stack{blocks("bxde")}, 2 * unit, false,
			"0:bbbbcccc"},
		{"a last unit cut by the size", blocks("..."), layer.Stack{blocks("bcd")}, nil, 2 * unit, false,
			"0:bbbbcccc 8:dddd"},
		{"a last unit written whole", blocks("..."), layer.Stack{blocks("bcd")}, nil, 2 * unit, true,
			"0:bbbbcccc 8:dddd0000"},
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
	d := &differ{img: badTail{blocks("..a")}, w: &w, old: layer.Stack{blocks("bcd")}, unit: unit}
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
