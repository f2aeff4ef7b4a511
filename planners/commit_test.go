package planners

import (
	"encoding/binary"
	"reflect"
	"testing"
)

const k = 1 << 10

func TestPlanCommit(t *testing.T) {
	tests := []struct {
		name string
		in   CommitInput
		want []Step
	}{
		{
			name: "empty overlay",
			in:   CommitInput{TopSize: 1 << 20, BaseSize: 1 << 20, BaseClusterSize: 64 * k, Segments: []Segment{{0, 1 << 20, false, StatusData}}},
		},
		{
			name: "data cluster copied",
			in: CommitInput{TopSize: 256 * k, BaseSize: 256 * k, BaseClusterSize: 64 * k, Segments: []Segment{
				{0, 64 * k, false, StatusData}, {64 * k, 64 * k, true, StatusData}, {128 * k, 128 * k, false, StatusZero}}},
			want: []Step{{StepCopy, 64 * k, 64 * k}},
		},
		{
			name: "aligned zero becomes a zero step",
			in: CommitInput{TopSize: 256 * k, BaseSize: 256 * k, BaseClusterSize: 64 * k, Segments: []Segment{
				{0, 128 * k, true, StatusZero}, {128 * k, 128 * k, false, StatusData}}},
			want: []Step{{StepZero, 0, 128 * k}},
		},
		{
			name: "4k overlay write rounds to the granule",
			in: CommitInput{TopSize: 256 * k, BaseSize: 256 * k, BaseClusterSize: 64 * k, Segments: []Segment{
				{0, 68 * k, false, StatusData}, {68 * k, 4 * k, true, StatusData}, {72 * k, 184 * k, false, StatusData}}},
			want: []Step{{StepCopy, 64 * k, 64 * k}},
		},
		{
			name: "zero shorter than a 2M base cluster is copied",
			in: CommitInput{TopSize: 4 << 20, BaseSize: 4 << 20, BaseClusterSize: 2 << 20, Segments: []Segment{
				{0, 64 * k, true, StatusZero}, {64 * k, 4<<20 - 64*k, false, StatusData}}},
			want: []Step{{StepCopy, 0, 64 * k}},
		},
		{
			name: "whole 2M zero cluster",
			in: CommitInput{TopSize: 4 << 20, BaseSize: 4 << 20, BaseClusterSize: 2 << 20, Segments: []Segment{
				{0, 2 << 20, true, StatusZero}, {2 << 20, 2 << 20, false, StatusData}}},
			want: []Step{{StepZero, 0, 2 << 20}},
		},
		{
			name: "grow and raw base",
			in: CommitInput{TopSize: 2 << 20, BaseSize: 1 << 20, Segments: []Segment{
				{0, 1 << 20, false, StatusData}, {1 << 20, 4 * k, true, StatusZero}, {1<<20 + 4*k, 1<<20 - 4*k, false, StatusZero}}},
			want: []Step{{StepGrow, 0, 2 << 20}, {StepCopy, 1 << 20, 64 * k}},
		},
		{
			name: "status runs are not merged",
			in: CommitInput{TopSize: 256 * k, BaseSize: 256 * k, BaseClusterSize: 64 * k, Segments: []Segment{
				{0, 8 * k, true, StatusZero}, {8 * k, 248 * k, false, StatusZero}}},
			want: []Step{{StepCopy, 0, 64 * k}},
		},
		{
			name: "windows of 16M",
			in: CommitInput{TopSize: 32 << 20, BaseSize: 32 << 20, BaseClusterSize: 64 * k, Segments: []Segment{
				{0, 32 << 20, true, StatusZero}}},
			want: []Step{{StepZero, 0, 32 << 20}},
		},
		{
			name: "copies split at 1M",
			in: CommitInput{TopSize: 3 << 20, BaseSize: 3 << 20, BaseClusterSize: 64 * k, Segments: []Segment{
				{0, 3 << 20, true, StatusData}}},
			want: []Step{{StepCopy, 0, 1 << 20}, {StepCopy, 1 << 20, 1 << 20}, {StepCopy, 2 << 20, 1 << 20}},
		},
		{
			name: "partial last granule copied",
			in: CommitInput{TopSize: 100 * k, BaseSize: 100 * k, BaseClusterSize: 64 * k, Segments: []Segment{
				{0, 64 * k, false, StatusData}, {64 * k, 36 * k, true, StatusZero}}},
			want: []Step{{StepCopy, 64 * k, 36 * k}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PlanCommit(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPlanCommitRejects(t *testing.T) {
	for _, in := range []CommitInput{
		{TopSize: -1},
		{TopSize: 10, Segments: []Segment{{0, 5, true, StatusData}}},
		{TopSize: 10, Segments: []Segment{{1, 9, true, StatusData}}},
		{TopSize: 10, BaseClusterSize: 3, Segments: []Segment{{0, 10, true, StatusData}}},
		{TopSize: 10, Segments: []Segment{{0, 10, true, 7}}},
	} {
		if _, err := PlanCommit(in); err == nil {
			t.Errorf("PlanCommit(%+v) succeeded", in)
		}
	}
}

// decodeInput builds a CommitInput from fuzz bytes: a cluster-size exponent,
// then 3-byte segments (length in KiB units, flags).
func decodeInput(data []byte) CommitInput {
	if len(data) < 2 {
		return CommitInput{}
	}
	in := CommitInput{}
	if e := data[0] % 23; e >= 9 {
		in.BaseClusterSize = 1 << e
	}
	in.BaseSize = int64(data[1]) * 64 * k
	data = data[2:]
	for len(data) >= 3 {
		n := int64(binary.LittleEndian.Uint16(data))%4096 + 1
		f := data[2]
		seg := Segment{Start: in.TopSize, Length: n * 512, Above: f&1 != 0, Status: Status(f>>1) % 3}
		in.Segments = append(in.Segments, seg)
		in.TopSize += seg.Length
		data = data[3:]
	}
	return in
}

func FuzzPlanCommit(f *testing.F) {
	f.Add([]byte{16, 4, 0x80, 0, 3, 0x80, 0, 4, 0x80, 0, 1})
	f.Add([]byte{21, 0, 0, 16, 5, 0, 1, 0, 0xff, 0x0f, 3})
	f.Add([]byte{0, 2, 8, 0, 1, 8, 0, 5, 8, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := decodeInput(data)
		steps, err := PlanCommit(in)
		if err != nil {
			return
		}
		g := Granularity(in.BaseClusterSize)
		covered := make(map[int64]bool) // granule starts covered by a step
		var last int64
		for i, s := range steps {
			if s.Kind == StepGrow {
				if i != 0 || s.Length != in.TopSize || in.TopSize <= in.BaseSize {
					t.Fatalf("bad grow step %v", s)
				}
				continue
			}
			if s.Start < last || s.Length <= 0 || s.End() > in.TopSize || s.Start%g != 0 {
				t.Fatalf("step %d %v out of order or range (last %d, size %d)", i, s, last, in.TopSize)
			}
			if s.Kind != StepCopy && !aligned(s.Start, s.Length, in.BaseClusterSize) {
				t.Fatalf("unaligned %v step %v", s.Kind, s)
			}
			if s.Kind == StepCopy && s.Length > MirrorMaxIO {
				t.Fatalf("copy step %v longer than %d", s, MirrorMaxIO)
			}
			for o := s.Start; o < s.End(); o += g {
				covered[o] = true
			}
			last = s.End()
		}
		// Every byte some layer above the base defines is covered.
		for _, s := range in.Segments {
			if !s.Above {
				continue
			}
			for o := s.Start / g * g; o < s.Start+s.Length; o += g {
				if !covered[o] {
					t.Fatalf("granule %d of %v not committed; steps %v", o, s, steps)
				}
			}
		}
	})
}
