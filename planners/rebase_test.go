package planners

import (
	"encoding/binary"
	"reflect"
	"testing"

	"instarfs/errcode"
)

func TestPlanRebase(t *testing.T) {
	const k, m = int64(1024), int64(1024 * 1024)
	tests := []struct {
		name string
		in   RebaseInput
		want []RebaseStep
		code errcode.Code
	}{
		{
			name: "whole overlay unallocated, chunked at 2M",
			in:   RebaseInput{Size: 5 * m, Unit: 64 * k, OldSize: 5 * m, NewSize: 5 * m, Unallocated: []Span{{0, 5 * m}}},
			want: []RebaseStep{
				{Off: 0, Len: 2 * m, ReadOld: true, ReadNew: true},
				{Off: 2 * m, Len: 2 * m, ReadOld: true, ReadNew: true},
				{Off: 4 * m, Len: m, ReadOld: true, ReadNew: true},
			},
		},
		{
			name: "allocated ranges skipped",
			in:   RebaseInput{Size: 4 * m, Unit: 64 * k, OldSize: 4 * m, NewSize: 4 * m, Unallocated: []Span{{0, 64 * k}, {3 * m, m}}},
			want: []RebaseStep{
				{Off: 0, Len: 64 * k, ReadOld: true, ReadNew: true},
				{Off: 3 * m, Len: m, ReadOld: true, ReadNew: true},
			},
		},
		{
			name: "short old: split at its end, past it zero",
			in:   RebaseInput{Size: 4 * m, Unit: 64 * k, OldSize: m, NewSize: 4 * m, Unallocated: []Span{{0, 4 * m}}},
			want: []RebaseStep{
				{Off: 0, Len: m, ReadOld: true, ReadNew: true},
				{Off: m, Len: 2 * m, PastOldEOF: true, ReadNew: true},
				{Off: 3 * m, Len: m, PastOldEOF: true, ReadNew: true},
			},
		},
		{
			name: "short new: split at its end",
			in:   RebaseInput{Size: 4 * m, Unit: 64 * k, OldSize: 4 * m, NewSize: m + 512, Unallocated: []Span{{0, 4 * m}}},
			want: []RebaseStep{
				{Off: 0, Len: m + 512, ReadOld: true, ReadNew: true},
				{Off: m + 512, Len: 2 * m, ReadOld: true},
				{Off: 3*m + 512, Len: m - 512, ReadOld: true},
			},
		},
		{
			name: "both zero: no step; one side zero: no read",
			in: RebaseInput{Size: 4 * m, Unit: 64 * k, OldSize: 4 * m, NewSize: 4 * m, Unallocated: []Span{{0, 4 * m}},
				OldZero: []Span{{0, 3 * m}}, NewZero: []Span{{0, 2 * m}, {3 * m, m}}},
			want: []RebaseStep{
				{Off: 2 * m, Len: 2 * m, ReadOld: true, ReadNew: true},
			},
		},
		{
			name: "one side zero: no read",
			in: RebaseInput{Size: 4 * m, Unit: 64 * k, OldSize: 4 * m, NewSize: 4 * m, Unallocated: []Span{{0, 4 * m}},
				OldZero: []Span{{2 * m, 2 * m}}},
			want: []RebaseStep{
				{Off: 0, Len: 2 * m, ReadOld: true, ReadNew: true},
				{Off: 2 * m, Len: 2 * m, ReadOld: false, ReadNew: true},
			},
		},
		{
			name: "detach",
			in:   RebaseInput{Size: 2 * m, Unit: 64 * k, OldSize: 2 * m, Unallocated: []Span{{0, 2 * m}}},
			want: []RebaseStep{{Off: 0, Len: 2 * m, ReadOld: true}},
		},
		{
			name: "unchanged ranges skipped and split",
			in: RebaseInput{Size: 4 * m, Unit: 64 * k, OldSize: 4 * m, NewSize: 4 * m, Unallocated: []Span{{0, 4 * m}},
				Unchanged: []Span{{0, m}, {m + 64*k, 3*m - 64*k}}},
			want: []RebaseStep{{Off: m, Len: 64 * k, ReadOld: true, ReadNew: true}},
		},
		{name: "bad unit", in: RebaseInput{Size: m, Unit: 1000}, code: errcode.BadArguments},
		{name: "overlapping spans", in: RebaseInput{Size: m, Unit: 512, Unallocated: []Span{{0, 4096}, {1024, 512}}}, code: errcode.BadArguments},
		{name: "span past size", in: RebaseInput{Size: m, Unit: 512, OldZero: []Span{{0, 2 * m}}}, code: errcode.BadArguments},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanRebase(tc.in)
			if tc.code != "" {
				if errcode.Of(err) != tc.code {
					t.Fatalf("error %v, want %s", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// spansFrom decodes up to n spans from b, in units of 512 bytes.
func spansFrom(b []byte, n int) ([]Span, []byte) {
	var out []Span
	pos := int64(0)
	for i := 0; i < n && len(b) >= 2; i++ {
		gap := int64(b[0]) * 512
		l := int64(b[1]) * 512
		b = b[2:]
		out = append(out, Span{pos + gap, l})
		pos += gap + l
	}
	return out, b
}

func FuzzPlanRebase(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 0, 8, 0, 8, 0, 4, 2, 4, 1, 4, 0, 0, 0, 1})
	f.Add([]byte{7, 0, 2, 0, 9, 3, 5, 200, 0, 0, 4, 1, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 12 {
			return
		}
		in := RebaseInput{
			Size:    int64(binary.LittleEndian.Uint16(b[0:])) * 512,
			Unit:    int64(512) << (b[2] % 14),
			OldSize: int64(binary.LittleEndian.Uint16(b[3:])) * 512,
			NewSize: int64(binary.LittleEndian.Uint16(b[5:])) * 512,
		}
		counts := b[7:11]
		rest := b[11:]
		in.Unallocated, rest = spansFrom(rest, int(counts[0]%8))
		in.OldZero, rest = spansFrom(rest, int(counts[1]%8))
		in.NewZero, rest = spansFrom(rest, int(counts[2]%8))
		in.Unchanged, _ = spansFrom(rest, int(counts[3]%8))
		steps, err := PlanRebase(in)
		if err != nil {
			if in.Validate() == nil {
				t.Fatalf("valid input refused: %v", err)
			}
			return
		}
		prev := int64(0)
		for _, s := range steps {
			if s.Len <= 0 || s.Len > RebaseChunk || s.Off < prev {
				t.Fatalf("bad step %+v after %d", s, prev)
			}
			prev = s.Off + s.Len
			inside := false
			for _, u := range in.Unallocated {
				if s.Off >= u.Start && prev <= u.End() {
					inside = true
				}
			}
			if !inside {
				t.Fatalf("step %+v outside the unallocated runs", s)
			}
			for _, u := range in.Unchanged {
				if s.Off < u.End() && u.Start < prev {
					t.Fatalf("step %+v overlaps unchanged %+v", s, u)
				}
			}
			if s.Off < in.OldSize && prev > in.OldSize || s.Off < in.NewSize && prev > in.NewSize {
				t.Fatalf("step %+v crosses a backing end", s)
			}
			if s.PastOldEOF != (s.Off >= in.OldSize) || !s.ReadOld && !s.ReadNew {
				t.Fatalf("bad flags in %+v", s)
			}
		}
	})
}
