package worker

import (
	"cmp"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"instarfs/planners"
)

// cacheDropper drops ranges of a file from the page cache on a goroutine of
// its own (posix_fadvise DONTNEED): commit's top, whose clusters its
// emptying frees. Truncating a file frees its cached pages in the truncating
// call, after the base is durable, when nothing is left to overlap with it;
// dropped while the copy goes on, the same work is done on another processor.
// Dirty pages among them are written first, which the top's fdatasync when it
// is emptied would do anyway. It is advice: what the file reads does not
// change, and failures are ignored.
//
// The kernel drops only whole folios, which can be larger than a cluster, so
// ranges copied far apart in time that lie side by side in the file drop
// only together: every range is kept (up to maxKeptSpans runs), and once the
// copy is over their union is dropped again, while the base is made durable
// and the top's metadata is cleared.
//
// add records a range; hand passes the recorded ranges to the goroutine;
// finish says the copy is over; wait waits for the goroutine to end.
type cacheDropper struct {
	f       *os.File
	pending []planners.Span
	batches chan []planners.Span
	done    chan struct{}
}

// maxKeptSpans bounds the runs a cacheDropper keeps for its last pass.
const maxKeptSpans = 1 << 16

func newCacheDropper(f *os.File) *cacheDropper {
	d := &cacheDropper{f: f, batches: make(chan []planners.Span, 16), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		var kept, spare []planners.Span
		drop := func(spans []planners.Span) {
			for _, s := range spans {
				_ = unix.Fadvise(int(d.f.Fd()), s.Start, s.Length, unix.FADV_DONTNEED)
			}
		}
		for b := range d.batches {
			b = coalesce(b)
			drop(b)
			if len(kept)+len(b) <= maxKeptSpans {
				kept, spare = merge(spare[:0], kept, b), kept
			}
		}
		drop(kept)
	}()
	return d
}

func (d *cacheDropper) add(off, n int64) {
	d.pending = append(d.pending, planners.Span{Start: off, Length: n})
}

func (d *cacheDropper) hand() {
	if len(d.pending) > 0 {
		d.batches <- d.pending
		d.pending = nil
	}
}

func (d *cacheDropper) finish() {
	d.hand()
	close(d.batches)
}

func (d *cacheDropper) wait() { <-d.done }

// merge appends to out the union of a and b, both sorted and coalesced, as
// spans sorted and coalesced: in one pass, since it runs after every batch.
func merge(out, a, b []planners.Span) []planners.Span {
	for len(a) > 0 || len(b) > 0 {
		var s planners.Span
		if len(b) == 0 || len(a) > 0 && a[0].Start <= b[0].Start {
			s, a = a[0], a[1:]
		} else {
			s, b = b[0], b[1:]
		}
		out = appendSpan(out, s.Start, s.Length)
	}
	return out
}

// coalesce sorts spans by offset and merges those that touch or overlap.
func coalesce(spans []planners.Span) []planners.Span {
	slices.SortFunc(spans, func(a, b planners.Span) int { return cmp.Compare(a.Start, b.Start) })
	out := spans[:0]
	for _, s := range spans {
		out = appendSpan(out, s.Start, s.Length)
	}
	return out
}
