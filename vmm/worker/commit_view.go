package worker

import (
	"instarfs/errcode"
	"instarfs/planners"
	"instarfs/vmm/worker/internal/layer"
)

// commitView reads guest bytes through a chain of images, top first, the way
// a guest sees them: each byte from the first image that defines it, zeros
// where none does or past the end of the image asked.
type commitView []layer.Image

// readAt fills p with the chain's bytes at off.
func (v commitView) readAt(p []byte, off int64) error {
	if len(v) == 0 {
		clear(p)
		return nil
	}
	return v.readLayer(0, p, off)
}

func (v commitView) readLayer(i int, p []byte, off int64) error {
	img := v[i]
	size := img.VirtualSize()
	if off >= size {
		clear(p)
		return nil
	}
	if end := off + int64(len(p)); end > size {
		clear(p[size-off:])
		p = p[:size-off]
	}
	for done := int64(0); done < int64(len(p)); {
		pos := off + done
		e, err := img.Extent(pos)
		if err != nil {
			return err
		}
		if e.End() <= pos {
			return errcode.New(errcode.Internal, "extent at %d made no progress", pos)
		}
		n := min(e.End()-pos, int64(len(p))-done)
		dst := p[done : done+n]
		switch {
		case e.Kind == layer.Data:
			if _, err := img.ReadAt(dst, pos); err != nil {
				return err
			}
		case e.Kind == layer.Unallocated && i+1 < len(v):
			if err := v.readLayer(i+1, dst, pos); err != nil {
				return err
			}
		default:
			clear(dst)
		}
		done += n
	}
	return nil
}

// commitSegments describes [0, size of the top) for the commit planner: for
// each run, whether a layer above the base (chain[:base]) defines it, and the
// whole chain's block status, as qemu's mirror job sees them
// (bdrv_is_allocated_above and bdrv_block_status_above).
func commitSegments(chain []member, base int) ([]planners.Segment, error) {
	size := chain[0].img.VirtualSize()
	var segs []planners.Segment
	for off := int64(0); off < size; {
		n := size - off
		above := false
		for i := 0; i < base; i++ {
			if off >= chain[i].img.VirtualSize() {
				// qemu: zeros synthesized past the end of a short
				// intermediate image count as allocated in it.
				above = true
				break
			}
			e, err := chain[i].img.Extent(off)
			if err != nil {
				return nil, err
			}
			if e.End() <= off {
				return nil, errInternal("extent at %d made no progress", off)
			}
			n = min(n, e.End()-off)
			if e.Kind != layer.Unallocated {
				above = true
				break
			}
		}
		me, err := mapEntry(chain, off, n)
		if err != nil {
			return nil, err
		}
		if me.Length <= 0 {
			return nil, errInternal("block status made no progress at offset %d", off)
		}
		n = min(n, me.Length)
		st := planners.StatusOther
		switch {
		case me.Data:
			st = planners.StatusData
		case me.Zero:
			st = planners.StatusZero
		}
		// Not merged with the previous segment: qemu decides on each
		// block-status run alone.
		segs = append(segs, planners.Segment{Start: off, Length: n, Above: above, Status: st})
		off += n
	}
	return segs, nil
}
