package worker

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"instarfs/planners"
)

// spans makes spans of start and length pairs.
func spans(pairs ...int64) []planners.Span {
	out := []planners.Span{}
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, planners.Span{Start: pairs[i], Length: pairs[i+1]})
	}
	return out
}

func TestCoalesce(t *testing.T) {
	for _, tt := range []struct {
		name     string
		in, want []planners.Span
	}{
		{"none", nil, spans()},
		{"one", spans(64, 64), spans(64, 64)},
		{"touching, out of order", spans(128, 64, 0, 64, 64, 64), spans(0, 192)},
		{"apart", spans(256, 64, 0, 64), spans(0, 64, 256, 64)},
		{"overlapping", spans(0, 100, 50, 100, 10, 20), spans(0, 150)},
		{"same twice", spans(0, 64, 0, 64), spans(0, 64)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := coalesce(append([]planners.Span{}, tt.in...))
			if len(got) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("coalesce(%v) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// TestMerge checks merge against coalesce of the two lists together, on
// random sorted and coalesced lists.
func TestMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	list := func() []planners.Span {
		var s []planners.Span
		for range rng.IntN(20) {
			s = append(s, planners.Span{Start: rng.Int64N(1000), Length: 1 + rng.Int64N(50)})
		}
		return coalesce(s)
	}
	for range 1000 {
		a, b := list(), list()
		want := coalesce(append(append([]planners.Span{}, a...), b...))
		got := merge(nil, a, b)
		if len(got) == 0 && len(want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("merge(%v, %v) = %v, want %v", a, b, got, want)
		}
	}
}
