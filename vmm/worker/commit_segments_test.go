package worker

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/planners"
)

// everySegment is commitSegments without its shortcut: the chain's status of
// every run of the top, walked extent by extent.
func everySegment(t *testing.T, chain []member, base int) []planners.Segment {
	t.Helper()
	c := newBlockChain(chain)
	size := c.stack.VirtualSize()
	var segs []planners.Segment
	for off := int64(0); off < size; {
		allocated, n, err := c.stack[:base].Allocated(off, size)
		if err != nil {
			t.Fatal(err)
		}
		me, err := c.mapEntry(off, n)
		if err != nil {
			t.Fatal(err)
		}
		segs = append(segs, planners.Segment{Start: off, Length: me.Length, Above: allocated, Status: statusOf(me)})
		off += me.Length
	}
	return segs
}

// dirtyRanges returns the Above segments rounded out to g, unmerged.
func dirtyRanges(segs []planners.Segment, g, size int64) [][2]int64 {
	var out [][2]int64
	for _, s := range segs {
		if s.Above {
			out = append(out, [2]int64{s.Start / g * g, min(size, (s.Start+s.Length+g-1)/g*g)})
		}
	}
	return out
}

// statusAt returns the status of the segment holding p and where it ends.
func statusAt(segs []planners.Segment, p int64) (planners.Status, int64) {
	for _, s := range segs {
		if s.Start <= p && p < s.Start+s.Length {
			return s.Status, s.Start + s.Length
		}
	}
	return 0, -1
}

// writes returns qemu-io commands that write, zero or discard n random
// ranges of an image of size bytes, of unit-aligned offsets and lengths.
func writes(rng *rand.Rand, n int, size, unit int64) string {
	var b strings.Builder
	for range n {
		off := rng.Int64N(size/unit) * unit
		length := min(size-off, unit*(1+rng.Int64N(4)))
		switch rng.IntN(4) {
		case 0:
			fmt.Fprintf(&b, " -c 'write -z %d %d'", off, length)
		case 1:
			fmt.Fprintf(&b, " -c 'discard %d %d'", off, length)
		default:
			fmt.Fprintf(&b, " -c 'write -P %d %d %d'", 1+rng.IntN(200), off, length)
		}
	}
	return b.String()
}

// TestCommitSegmentsPlanAlike checks commitSegments' shortcut: on chains of
// random content, of cluster sizes below, at and above the granularity, and
// with an intermediate image above the base, the plan made from its
// segments is the plan made from every run's status. The shortcut must
// also have been taken where the top is sparse.
func TestCommitSegmentsPlanAlike(t *testing.T) {
	qemutest.NeedQemu(t)
	type layer struct {
		opts       string
		unit       int64 // alignment of the random writes
		writes     int
		rawBacking bool // the image is raw (only as the bottom)
	}
	tests := []struct {
		name   string
		size   int64
		layers []layer // bottom first
		base   int     // index of the base, counted from the top
	}{
		{"64k on 64k", 64 << 20, []layer{{"", 64 << 10, 200, false}, {"", 64 << 10, 40, false}}, 1},
		{"4k on 64k", 32 << 20, []layer{{"", 64 << 10, 100, false}, {"-o cluster_size=4096", 4 << 10, 60, false}}, 1},
		{"64k on 4k", 32 << 20, []layer{{"-o cluster_size=4096", 4 << 10, 300, false}, {"", 64 << 10, 30, false}}, 1},
		{"512 on 512", 8 << 20, []layer{{"-o cluster_size=512", 512, 300, false}, {"-o cluster_size=512", 512, 60, false}}, 1},
		{"64k on 2M", 64 << 20, []layer{{"-o cluster_size=2M", 2 << 20, 10, false}, {"", 64 << 10, 40, false}}, 1},
		{"2M on 64k", 64 << 20, []layer{{"", 64 << 10, 200, false}, {"-o cluster_size=2M", 64 << 10, 10, false}}, 1},
		{"subclusters on 64k", 32 << 20, []layer{{"", 64 << 10, 100, false}, {"-o extended_l2=on", 2 << 10, 60, false}}, 1},
		{"on raw", 32 << 20, []layer{{"", 64 << 10, 100, true}, {"", 64 << 10, 30, false}}, 1},
		{"three, into the bottom", 32 << 20, []layer{{"", 64 << 10, 100, false}, {"-o cluster_size=4096", 4 << 10, 30, false}, {"", 64 << 10, 30, false}}, 2},
		{"three, into the middle", 32 << 20, []layer{{"", 64 << 10, 100, false}, {"-o cluster_size=4096", 4 << 10, 60, false}, {"", 64 << 10, 30, false}}, 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			dir := t.TempDir()
			var script strings.Builder
			for j, l := range tc.layers {
				name := fmt.Sprintf("l%d.qcow2", j)
				switch {
				case l.rawBacking:
					name = "l0.raw"
					fmt.Fprintf(&script, "qemu-img create -q -f raw %s %d\n", name, tc.size)
				case j == 0:
					fmt.Fprintf(&script, "qemu-img create -q -f qcow2 %s %s %d\n", l.opts, name, tc.size)
				default:
					below := fmt.Sprintf("l%d.qcow2", j-1)
					format := "qcow2"
					if tc.layers[j-1].rawBacking {
						below, format = "l0.raw", "raw"
					}
					fmt.Fprintf(&script, "qemu-img create -q -f qcow2 %s -b %s -F %s %s\n", l.opts, below, format, name)
				}
				format := "qcow2"
				if l.rawBacking {
					format = "raw"
				}
				fmt.Fprintf(&script, "qemu-io -f %s%s %s >/dev/null\n", format, writes(rng, l.writes, tc.size, l.unit), name)
			}
			sh(t, dir, script.String())
			chain := openChainFiles(t, dir, fmt.Sprintf("l%d.qcow2", len(tc.layers)-1))
			c := openChain(t, dir, fmt.Sprintf("l%d.qcow2", len(tc.layers)-1))
			in := planners.CommitInput{TopSize: chain[0].img.VirtualSize(), BaseSize: chain[tc.base].img.VirtualSize()}
			if c[tc.base].format != "raw" {
				in.BaseClusterSize = c[tc.base].info.ClusterSize
			}
			segs, err := commitSegments(chain, tc.base, planners.Granularity(in.BaseClusterSize))
			if err != nil {
				t.Fatal(err)
			}
			all := everySegment(t, chain, tc.base)
			in.Segments = all
			want, err := planners.PlanCommit(in)
			if err != nil {
				t.Fatal(err)
			}
			in.Segments = segs
			got, err := planners.PlanCommit(in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("plans differ: %d steps from %d segments, %d from every run's %d", len(got), len(segs), len(want), len(all))
				for k := range min(len(got), len(want)) {
					if got[k] != want[k] {
						t.Fatalf("first difference at step %d: %+v, want %+v", k, got[k], want[k])
					}
				}
			}
			// Inside the dirty ranges the statuses and where their runs end
			// do not depend on the shortcut either (today's planner asks
			// only at multiples of the granularity, where the difference
			// would not show).
			for _, d := range dirtyRanges(all, planners.Granularity(in.BaseClusterSize), in.TopSize) {
				for _, s := range all {
					p := max(s.Start, d[0])
					if p >= min(s.Start+s.Length, d[1]) {
						continue
					}
					gs, ge := statusAt(segs, p)
					if end := min(s.Start+s.Length, d[1]); gs != s.Status || min(ge, d[1]) != end {
						t.Fatalf("at %d: status %d until %d, every run's %d until %d", p, gs, min(ge, d[1]), s.Status, end)
					}
				}
			}
			if len(segs) >= len(all) {
				t.Errorf("%d segments, every run's %d: no run was skipped", len(segs), len(all))
			}
		})
	}
}
