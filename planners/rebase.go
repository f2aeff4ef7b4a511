package planners

import (
	"instarfs/errcode"
)

// RebaseChunk is the largest range one rebase step compares, qemu-img's
// IO_BUF_SIZE.
const RebaseChunk = 2 << 20

// Span is a run of guest bytes [Start, Start+Length).
type Span struct {
	Start, Length int64
}

// End is the first guest offset after the span.
func (s Span) End() int64 { return s.Start + s.Length }

// RebaseInput is what the safe rebase planner needs to know about an overlay
// and its old and new backing chains. Every span list is in ascending order,
// without overlaps, inside [0, Size).
type RebaseInput struct {
	// Size is the overlay's virtual size.
	Size int64
	// Unit is the overlay's allocation unit: its cluster size, or its
	// subcluster size with extended L2 entries. A power of two, at least 512.
	Unit int64
	// OldSize is the virtual size of the old backing file (0 when the
	// overlay has none); NewSize that of the new backing file (0 when
	// detaching).
	OldSize, NewSize int64
	// Unallocated are the overlay's unallocated runs, split where qemu's
	// block status splits them (at L2 table boundaries and where the kind of
	// unallocated entry changes). Only these are compared.
	Unallocated []Span
	// OldZero and NewZero are ranges known to read as zero in the old and
	// the new chain without reading data (holes and zero clusters in every
	// layer). They only save reads.
	OldZero, NewZero []Span
	// Unchanged are ranges where the old and new chains are known to be
	// equal: the new backing is part of the old chain and no layer above it
	// allocates them (qemu's in-chain shortcut).
	Unchanged []Span
}

// RebaseStep is one range of a safe rebase: read the old and the new chain
// over [Off, Off+Len), compare, and where they differ write the old chain's
// content into the overlay, whole units at a time.
type RebaseStep struct {
	Off, Len int64
	// PastOldEOF is set when the range lies at or past the old backing's end:
	// differences are then written as zeroes (zero flags where the format
	// has them), as qemu-img does.
	PastOldEOF bool
	// ReadOld and ReadNew are false where that side is known to read as
	// zero over the whole range.
	ReadOld, ReadNew bool
}

func badPlan(format string, args ...any) error {
	return errcode.New(errcode.BadArguments, "rebase plan: "+format, args...)
}

func checkSpans(what string, spans []Span, size int64) error {
	prev := int64(0)
	for i, s := range spans {
		if s.Start < prev || s.Length <= 0 || s.End() > size || s.End() < s.Start {
			return badPlan("%s span %d (%d+%d) is out of order or outside 0..%d", what, i, s.Start, s.Length, size)
		}
		prev = s.End()
	}
	return nil
}

// Validate checks the input's invariants.
func (in *RebaseInput) Validate() error {
	if in.Size < 0 || in.OldSize < 0 || in.NewSize < 0 {
		return badPlan("negative size")
	}
	if in.Unit < 512 || in.Unit > 2<<20 || in.Unit&(in.Unit-1) != 0 {
		return badPlan("unit %d is not a power of two in 512..2M", in.Unit)
	}
	for _, c := range []struct {
		what  string
		spans []Span
	}{{"unallocated", in.Unallocated}, {"old zero", in.OldZero}, {"new zero", in.NewZero}, {"unchanged", in.Unchanged}} {
		if err := checkSpans(c.what, c.spans, in.Size); err != nil {
			return err
		}
	}
	return nil
}

// cursor walks a span list in ascending order.
type cursor struct {
	spans []Span
	i     int
}

// at returns whether off is inside a span, and the distance from off to the
// end of that span (inside) or to the start of the next span (outside; -1
// when there is none).
func (c *cursor) at(off int64) (bool, int64) {
	for c.i < len(c.spans) && c.spans[c.i].End() <= off {
		c.i++
	}
	if c.i == len(c.spans) {
		return false, -1
	}
	s := c.spans[c.i]
	if off >= s.Start {
		return true, s.End() - off
	}
	return false, s.Start - off
}

// covers reports whether [off, off+n) lies inside one span.
func (c *cursor) covers(off, n int64) bool {
	in, left := c.at(off)
	return in && left >= n
}

// PlanRebase returns the steps of a safe rebase in ascending guest order,
// chunked as qemu-img 7.2 chunks its loop: at most RebaseChunk bytes, within
// one unallocated run of the overlay, and split at the old and the new
// backing's ends. Ranges that are unchanged, or that read as zero on both
// sides, produce no step.
func PlanRebase(in RebaseInput) ([]RebaseStep, error) {
	if err := in.Validate(); err != nil {
		return nil, err
	}
	var steps []RebaseStep
	unchanged := cursor{spans: in.Unchanged}
	oldZero := cursor{spans: in.OldZero}
	newZero := cursor{spans: in.NewZero}
	for _, run := range in.Unallocated {
		for off := run.Start; off < run.End(); {
			n := min(RebaseChunk, run.End()-off)
			if len(in.Unchanged) > 0 {
				inside, left := unchanged.at(off)
				if inside {
					off += min(n, left)
					continue
				}
				if left > 0 {
					n = min(n, left)
				}
			}
			past := off >= in.OldSize
			if !past {
				n = min(n, in.OldSize-off)
			}
			if off < in.NewSize {
				n = min(n, in.NewSize-off)
			}
			st := RebaseStep{
				Off: off, Len: n, PastOldEOF: past,
				ReadOld: !past && !oldZero.covers(off, n),
				ReadNew: off < in.NewSize && !newZero.covers(off, n),
			}
			if st.ReadOld || st.ReadNew {
				steps = append(steps, st)
			}
			off += n
		}
	}
	return steps, nil
}
