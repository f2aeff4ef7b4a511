package planners

import (
	"fmt"
)

// Status is what the whole chain, seen from the top, says about a run of guest
// bytes: qemu's block status (BDRV_BLOCK_DATA / BDRV_BLOCK_ZERO) walked from the
// top down to the bottom of the chain.
type Status uint8

const (
	// StatusOther is neither data nor known zeros (qemu discards such ranges).
	StatusOther Status = iota
	// StatusData is data stored in some layer.
	StatusData
	// StatusZero reads as zero without data behind it.
	StatusZero
)

// Segment is a run of guest bytes of the top image with one status: what one
// qemu block-status query through the chain returns (neighbouring segments of
// the same status are not merged, as qemu does not merge them either).
type Segment struct {
	Start, Length int64
	// Above is set when some layer above the base (the top, or an intermediate
	// image between the top and the base) defines the range (data or zero).
	Above  bool
	Status Status
}

// CommitInput is what the commit planner needs to know.
type CommitInput struct {
	TopSize  int64 // virtual size of the top image
	BaseSize int64 // virtual size of the base before the commit
	// BaseClusterSize is the base's cluster (or grain) size; 0 when the base
	// has none (raw).
	BaseClusterSize int64
	// Segments cover [0, TopSize) in order, without gaps or overlaps.
	Segments []Segment
}

// StepKind is what a commit step does to the base.
type StepKind uint8

const (
	// StepGrow grows the base to Length bytes (Start is 0).
	StepGrow StepKind = iota
	// StepCopy copies [Start, Start+Length) from the top's chain view into the
	// base.
	StepCopy
	// StepZero makes the range, aligned to the base's clusters, read as zero,
	// freeing what the base stored there (qemu's write-zeroes with MAY_UNMAP).
	StepZero
	// StepDiscard discards the range, aligned to the base's clusters.
	StepDiscard
)

func (k StepKind) String() string {
	switch k {
	case StepGrow:
		return "grow"
	case StepCopy:
		return "copy"
	case StepZero:
		return "zero"
	case StepDiscard:
		return "discard"
	}
	return fmt.Sprintf("StepKind(%d)", uint8(k))
}

// Step is one action on the base, in order.
type Step struct {
	Kind          StepKind
	Start, Length int64
}

// End is the first offset after the step's range.
func (s Step) End() int64 { return s.Start + s.Length }

// Limits of qemu's mirror job, which `qemu-img commit` runs.
const (
	// MirrorBufSize bounds how much one iteration looks at (the job's buffer).
	MirrorBufSize = 16 << 20
	// MirrorMaxIO bounds one copy.
	MirrorMaxIO    = 1 << 20
	minGranularity = 4 << 10
	maxGranularity = 64 << 10
)

// Granularity is qemu's dirty-bitmap granularity for a base of cluster size cs:
// clamp(cs, 4 KiB, 64 KiB), and 64 KiB when the base has no cluster size.
func Granularity(cs int64) int64 {
	if cs <= 0 {
		return maxGranularity
	}
	return min(max(cs, minGranularity), maxGranularity)
}

// PlanCommit returns the steps that commit the layers above the base into the
// base, the way qemu's mirror job (active commit) decides them:
//
//   - the base grows to the top's size when it is smaller (never shrinks);
//   - every range some layer above the base defines is dirty, rounded out to
//     the granularity;
//   - walking the dirty ranges in ascending order, in windows of at most
//     MirrorBufSize, a status run (one segment, cut at the window's end) is
//     copied when it is data, and when it is not data and is aligned to the
//     base's clusters it becomes a zero (or discard) step; runs shorter than the
//     granularity, and unaligned ones, are copied (zeros are written as data).
//
// Steps are in ascending order of offset and do not overlap. The input is
// validated; a bad input is an error, never a panic.
func PlanCommit(in CommitInput) ([]Step, error) {
	if err := in.validate(); err != nil {
		return nil, err
	}
	var steps []Step
	if in.TopSize > in.BaseSize {
		steps = append(steps, Step{Kind: StepGrow, Length: in.TopSize})
	}
	g := Granularity(in.BaseClusterSize)
	for _, d := range dirtyRuns(in.Segments, g, in.TopSize) {
		// qemu clears up to MirrorBufSize of consecutive dirty chunks at a
		// time and walks that window with block-status queries.
		for win := d.Start; win < d.End(); {
			winEnd := min(d.End(), win+MirrorBufSize)
			off := win
			for off < winEnd {
				st, run := statusRun(in.Segments, off, winEnd-off)
				if st == StatusData {
					run = min(run, MirrorMaxIO)
				}
				run -= run % g
				kind := StepCopy
				if run < g {
					run = g
				} else if st != StatusData && aligned(off, run, in.BaseClusterSize) {
					kind = StepZero
					if st == StatusOther {
						kind = StepDiscard
					}
				}
				if kind == StepCopy {
					run = min(run, MirrorMaxIO) // bounded buffers; the result is the same
				}
				run = min(run, in.TopSize-off)
				steps = appendStep(steps, Step{Kind: kind, Start: off, Length: run})
				off += run
			}
			win = off
		}
	}
	return steps, nil
}

// appendStep adds s, merging it with the previous step when they are of the
// same kind, adjacent, and the merged copy stays within MirrorMaxIO.
func appendStep(steps []Step, s Step) []Step {
	if n := len(steps); n > 0 {
		p := &steps[n-1]
		if p.Kind == s.Kind && p.End() == s.Start && s.Kind != StepGrow &&
			(s.Kind != StepCopy || p.Length+s.Length <= MirrorMaxIO) {
			p.Length += s.Length
			return steps
		}
	}
	return append(steps, s)
}

// aligned reports whether [off, off+n) is made of whole clusters of size cs
// (qemu's bdrv_round_to_clusters leaves it unchanged). Without a cluster size
// everything is aligned.
func aligned(off, n, cs int64) bool {
	if cs <= 0 {
		return true
	}
	return off%cs == 0 && n%cs == 0
}

func (in CommitInput) validate() error {
	if in.TopSize < 0 || in.BaseSize < 0 || in.BaseClusterSize < 0 {
		return fmt.Errorf("commit plan: negative size")
	}
	if in.BaseClusterSize > 0 && in.BaseClusterSize&(in.BaseClusterSize-1) != 0 {
		return fmt.Errorf("commit plan: base cluster size %d is not a power of two", in.BaseClusterSize)
	}
	var pos int64
	for i, s := range in.Segments {
		if s.Start != pos || s.Length <= 0 || s.Start+s.Length < s.Start {
			return fmt.Errorf("commit plan: segment %d [%d, +%d) does not follow %d", i, s.Start, s.Length, pos)
		}
		if s.Status > StatusZero {
			return fmt.Errorf("commit plan: segment %d has invalid status %d", i, s.Status)
		}
		pos += s.Length
	}
	if pos != in.TopSize {
		return fmt.Errorf("commit plan: segments cover %d bytes of %d", pos, in.TopSize)
	}
	return nil
}

// dirtyRuns returns the ranges qemu's dirty bitmap marks: every Above segment
// rounded out to g, merged, clipped to size.
func dirtyRuns(segs []Segment, g, size int64) []Step {
	var out []Step
	for _, s := range segs {
		if !s.Above {
			continue
		}
		start := s.Start / g * g
		end := min(size, (s.Start+s.Length+g-1)/g*g)
		if n := len(out); n > 0 && out[n-1].End() >= start {
			out[n-1].Length = max(out[n-1].End(), end) - out[n-1].Start
			continue
		}
		out = append(out, Step{Kind: StepCopy, Start: start, Length: end - start})
	}
	return out
}

// statusRun returns the status at off and how far it extends, at most n: the
// rest of the segment holding off. Segments are not merged: each is what one
// qemu block-status query returns, and qemu decides on that run alone.
func statusRun(segs []Segment, off, n int64) (Status, int64) {
	s := segs[segmentAt(segs, off)]
	return s.Status, min(s.Start+s.Length-off, n)
}

// segmentAt returns the index of the segment holding off (binary search).
func segmentAt(segs []Segment, off int64) int {
	lo, hi := 0, len(segs)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if segs[mid].Start <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}
