package ctl

import (
	"reflect"
	"testing"

	"instarfs/proto"
)

func TestMapWindow(t *testing.T) {
	off := func(v int64) *int64 { return &v }
	full := []proto.MapEntry{
		{Start: 0, Length: 262144, Present: true, Data: true, Offset: off(327680)},
		{Start: 262144, Length: 262144, Zero: true},
		{Start: 524288, Length: 65536, Present: true, Data: true, Offset: off(720896)},
		{Start: 589824, Length: 3604480, Zero: true},
	}
	tests := []struct {
		name          string
		start, maxLen int64
		want          []proto.MapEntry
	}{
		{"whole", 0, -1, full},
		{"cut both ends", 1000, 524288, []proto.MapEntry{
			{Start: 1000, Length: 261144, Present: true, Data: true, Offset: off(328680)},
			{Start: 262144, Length: 262144, Zero: true},
			{Start: 524288, Length: 1000, Present: true, Data: true, Offset: off(720896)},
		}},
		{"inside one row", 1024, 2048, []proto.MapEntry{{Start: 1024, Length: 2048, Present: true, Data: true, Offset: off(328704)}}},
		{"last byte", 4194303, -1, []proto.MapEntry{{Start: 4194303, Length: 1, Zero: true}}},
		{"zero length", 0, 0, []proto.MapEntry{{Start: 0}}},
		{"past the end", 100 << 20, -1, []proto.MapEntry{{Start: 100 << 20}}},
		{"length past the end", 4194300, 1 << 62, []proto.MapEntry{{Start: 4194300, Length: 4, Zero: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &MapResult{Entries: append([]proto.MapEntry(nil), full...)}
			m.Window(tt.start, tt.maxLen)
			if !reflect.DeepEqual(m.Entries, tt.want) {
				t.Errorf("Window(%d, %d) = %+v, want %+v", tt.start, tt.maxLen, m.Entries, tt.want)
			}
		})
	}
}
