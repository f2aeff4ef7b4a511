package worker

import (
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
