package diskview

import (
	"context"
	"sort"
	"sync"

	"instarfs/proto"
	"instarfs/vmm"
)

// maxMapRuns bounds the runs a chain's map keeps (about 16 bytes each);
// past them, the map covers a prefix of the disk and the worker answers
// for the rest.
const maxMapRuns = 1 << 16

// runMap is where a chain stores data and where it has holes, asked of the
// worker once per open chain: reads that fall in a hole are answered with
// zeros, and SEEK_DATA/SEEK_HOLE, without a round trip.
type runMap struct {
	once    sync.Once
	ends    []int64 // ends[i] is the end of run i; runs are consecutive from 0
	data    []bool
	covered int64 // the map says nothing at or past this offset
}

// load asks the worker for the map, once; a failure leaves it shorter. Not
// the reader's ctx: an interrupted reader must not cut the map short for
// the chain's other readers.
func (m *runMap) load(h *Handle) {
	m.once.Do(func() {
		ctx := context.Background()
		for m.covered < h.e.size && len(m.ends) < maxMapRuns {
			var runs []proto.DiskRun
			err := h.call(ctx, func(d *vmm.Disk) (err error) {
				runs, err = d.Map(ctx, m.covered)
				return err
			})
			if err != nil {
				return
			}
			for _, r := range runs {
				if len(m.ends) == maxMapRuns {
					break
				}
				m.covered += r.Length
				m.ends = append(m.ends, m.covered)
				m.data = append(m.data, r.Data)
			}
		}
	})
}

// run returns the run holding off: whether it is data and where it ends;
// ok is false where the map says nothing.
func (m *runMap) run(off int64) (data bool, end int64, ok bool) {
	if off >= m.covered {
		return false, 0, false
	}
	i := sort.Search(len(m.ends), func(i int) bool { return m.ends[i] > off })
	return m.data[i], m.ends[i], true
}

// hole reports whether [off, off+n) lies in one hole.
func (m *runMap) hole(off int64, n int) bool {
	data, end, ok := m.run(off)
	return ok && !data && off+int64(n) <= end
}
