package worker

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

func TestCoalesce(t *testing.T) {
	for _, tt := range []struct {
		name     string
		in, want []span
	}{
		{"none", nil, []span{}},
		{"one", []span{{64, 64}}, []span{{64, 64}}},
		{"touching, out of order", []span{{128, 64}, {0, 64}, {64, 64}}, []span{{0, 192}}},
		{"apart", []span{{256, 64}, {0, 64}}, []span{{0, 64}, {256, 64}}},
		{"overlapping", []span{{0, 100}, {50, 100}, {10, 20}}, []span{{0, 150}}},
		{"same twice", []span{{0, 64}, {0, 64}}, []span{{0, 64}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := coalesce(append([]span{}, tt.in...))
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
	list := func() []span {
		var s []span
		for range rng.IntN(20) {
			s = append(s, span{rng.Int64N(1000), 1 + rng.Int64N(50)})
		}
		return coalesce(s)
	}
	for range 1000 {
		a, b := list(), list()
		want := coalesce(append(append([]span{}, a...), b...))
		got := merge(nil, a, b)
		if len(got) == 0 && len(want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("merge(%v, %v) = %v, want %v", a, b, got, want)
		}
	}
}
