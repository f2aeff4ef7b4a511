package diskview

import "testing"

func TestRunMap(t *testing.T) {
	// data [0,10) hole [10,30) data [30,35); the map covers 35 of 50 bytes.
	m := &runMap{ends: []int64{10, 30, 35}, data: []bool{true, false, true}, covered: 35}
	for _, tc := range []struct {
		off      int64
		data     bool
		end      int64
		ok       bool
		hole4    bool // [off, off+4) is one hole
		hole20at bool // [off, off+20) is one hole
	}{
		{0, true, 10, true, false, false},
		{9, true, 10, true, false, false},
		{10, false, 30, true, true, true},
		{26, false, 30, true, true, false},
		{27, false, 30, true, false, false},
		{34, true, 35, true, false, false},
		{35, false, 0, false, false, false},
		{49, false, 0, false, false, false},
	} {
		data, end, ok := m.run(tc.off)
		if data != tc.data || end != tc.end || ok != tc.ok {
			t.Errorf("run(%d) = %v, %d, %v; want %v, %d, %v", tc.off, data, end, ok, tc.data, tc.end, tc.ok)
		}
		if got := m.hole(tc.off, 4); got != tc.hole4 {
			t.Errorf("hole(%d, 4) = %v", tc.off, got)
		}
		if got := m.hole(tc.off, 20); got != tc.hole20at {
			t.Errorf("hole(%d, 20) = %v", tc.off, got)
		}
	}
}
