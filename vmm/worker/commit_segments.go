package worker

import "instarfs/planners"

// commitSegments describes [0, size of the top) for the commit planner: for
// each run, whether a layer above the base (chain[:base]) defines it, and the
// whole chain's block status, as qemu's mirror job sees them
// (bdrv_is_allocated_above and bdrv_block_status_above). Zeros synthesized
// past the end of a short intermediate image count as allocated in it, as in
// qemu.
func commitSegments(chain []member, base int) ([]planners.Segment, error) {
	c := newBlockChain(chain)
	above := c.stack[:base]
	size := c.stack.VirtualSize()
	var segs []planners.Segment
	for off := int64(0); off < size; {
		allocated, n, err := above.Allocated(off, size)
		if err != nil {
			return nil, err
		}
		me, err := c.mapEntry(off, n)
		if err != nil {
			return nil, err
		}
		if me.Length <= 0 {
			return nil, errInternal("block status made no progress at offset %d", off)
		}
		st := planners.StatusOther
		switch {
		case me.Data:
			st = planners.StatusData
		case me.Zero:
			st = planners.StatusZero
		}
		// Not merged with the previous segment: qemu decides on each
		// block-status run alone.
		segs = append(segs, planners.Segment{Start: off, Length: me.Length, Above: allocated, Status: st})
		off += me.Length
	}
	return segs, nil
}
