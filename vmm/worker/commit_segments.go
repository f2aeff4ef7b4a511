package worker

import (
	"instarfs/planners"
	"instarfs/proto"
)

// commitSegments describes [0, size of the top) for the commit planner: for
// each run, whether a layer above the base (chain[:base]) defines it, and the
// whole chain's block status, as qemu's mirror job sees them
// (bdrv_is_allocated_above and bdrv_block_status_above). Zeros synthesized
// past the end of a short intermediate image count as allocated in it, as in
// qemu.
//
// The planner reads the status only inside the ranges qemu's dirty bitmap
// marks: the runs defined above the base, rounded out to the granularity g.
// The middle of a run that no layer above defines, whole units of g away from
// its ends, is therefore one segment of StatusOther, and the base's extents
// there are not walked (on a large base under a sparse top they are most of
// them). Where a run's end is the dirty ranges' edge, its status is asked from
// there on: where a run of one status ends does not depend on where inside it
// the question starts.
func commitSegments(chain []member, base int, g int64) ([]planners.Segment, error) {
	c := newBlockChain(chain)
	above := c.stack[:base]
	size := c.stack.VirtualSize()
	var segs []planners.Segment
	// status appends the block-status segments of [off, end).
	status := func(off, end int64, allocated bool) error {
		for off < end {
			me, err := c.mapEntry(off, end-off)
			if err != nil {
				return err
			}
			if me.Length <= 0 {
				return errInternal("block status made no progress at offset %d", off)
			}
			// Not merged with the previous segment: qemu decides on each
			// block-status run alone.
			segs = append(segs, planners.Segment{Start: off, Length: me.Length, Above: allocated, Status: statusOf(me)})
			off += me.Length
		}
		return nil
	}
	for off := int64(0); off < size; {
		allocated, n, err := above.Allocated(off, size)
		if err != nil {
			return nil, err
		}
		end := off + n
		if allocated {
			err = status(off, end, true)
		} else {
			head := min(end, (off+g-1)/g*g) // may end the dirty range before
			tail := max(head, end/g*g)      // may begin the dirty range after
			err = status(off, head, false)
			if err == nil && head < tail {
				segs = append(segs, planners.Segment{Start: head, Length: tail - head, Status: planners.StatusOther})
			}
			if err == nil {
				err = status(tail, end, false)
			}
		}
		if err != nil {
			return nil, err
		}
		off = end
	}
	return segs, nil
}

// statusOf is the planner's status of a block-status run.
func statusOf(me proto.MapEntry) planners.Status {
	switch {
	case me.Data:
		return planners.StatusData
	case me.Zero:
		return planners.StatusZero
	}
	return planners.StatusOther
}
