package worker

import (
	"encoding/json"
	"io"
	"math"
	"testing"
	"time"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
)

// stripes is a layer.Image whose extents alternate between data (at
// increasing host offsets, never contiguous) and zero, every unit bytes: the
// map of a small hostile image that maps a huge disk.
type stripes struct {
	size, unit int64
}

func (s stripes) VirtualSize() int64 { return s.size }

func (s stripes) ReadAt(p []byte, off int64) (int, error) { return 0, io.EOF }

func (s stripes) Extent(off int64) (layer.Extent, error) {
	i := off / s.unit
	e := layer.Extent{Start: off, Length: min((i+1)*s.unit, s.size) - off, Kind: layer.Zero, HostOffset: -1}
	if i%2 == 0 {
		e.Kind, e.HostOffset = layer.Data, 2*off+(1<<20)
	}
	return e, nil
}

// TestMapRowsBounded checks that a map with more rows than the host accepts
// fails early with IMAGE_TOO_LARGE, one larger than the caller's limit with
// DOCUMENT_TOO_LARGE, and that smaller maps are whole.
func TestMapRowsBounded(t *testing.T) {
	tests := []struct {
		name     string
		img      stripes
		maxBytes int64
		wantErr  errcode.Code
		wantRows int
	}{
		{name: "small", img: stripes{size: 1 << 20, unit: 512}, wantRows: 2048},
		{name: "2 PiB", img: stripes{size: 1 << 51, unit: 64 << 10}, wantErr: errcode.ImageTooLarge},
		{name: "largest", img: stripes{size: math.MaxInt64 &^ 511, unit: 512}, wantErr: errcode.ImageTooLarge},
		// 2048 rows of about 80 bytes.
		{name: "small within a limit", img: stripes{size: 1 << 20, unit: 512}, maxBytes: 256 << 10, wantRows: 2048},
		{name: "small beyond a limit", img: stripes{size: 1 << 20, unit: 512}, maxBytes: 64 << 10, wantErr: errcode.DocumentTooLarge},
		{name: "2 PiB beyond a limit", img: stripes{size: 1 << 51, unit: 64 << 10}, maxBytes: 32 << 20, wantErr: errcode.DocumentTooLarge},
		{name: "a limit above the worker's own", img: stripes{size: 1 << 51, unit: 64 << 10}, maxBytes: 1 << 40, wantErr: errcode.ImageTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			rows, err := chainMap([]member{{img: tt.img}}, tt.maxBytes)
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("took %v", d)
			}
			if tt.wantErr != "" {
				if errcode.Of(err) != tt.wantErr {
					t.Fatalf("got %d rows, error %v; want %s", len(rows), err, tt.wantErr)
				}
				return
			}
			if err != nil || len(rows) != tt.wantRows {
				t.Fatalf("got %d rows, error %v; want %d rows", len(rows), err, tt.wantRows)
			}
		})
	}
}

// TestMapEntryJSONLen checks the size estimate against encoding/json.
func TestMapEntryJSONLen(t *testing.T) {
	off := int64(math.MaxInt64)
	zero := int64(0)
	for _, e := range []proto.MapEntry{
		{},
		{Start: 1, Length: 2, Depth: 3, Present: true, Zero: true, Data: true},
		{Start: math.MaxInt64, Length: math.MaxInt64, Depth: 16, Data: true, Offset: &off},
		{Start: 512, Length: 65536, Depth: 0, Present: true, Offset: &zero},
	} {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := mapEntryJSONLen(e), int64(len(b)+1); got != want {
			t.Errorf("mapEntryJSONLen(%s) = %d, want %d", b, got, want)
		}
	}
}
