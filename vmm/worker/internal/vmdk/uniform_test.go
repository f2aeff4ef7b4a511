package vmdk

import (
	"bytes"
	"encoding/binary"
	"testing"

	"instarfs/vmm/worker/internal/layer"
)

// TestUniformGrainTables checks that a run through grain tables whose grains
// all read the same way (unallocated, zeroed, compressed) is found table by
// table, not grain by grain: one Extent call covers a disk of more grains than
// one call scans, whether the tables are distinct or every directory entry
// names the same one.
func TestUniformGrainTables(t *testing.T) {
	const grains = 1 << 17 // sectors, with 1-sector grains: twice maxScanGrains
	allZero := make([]uint64, grains)
	for i := range allZero {
		allZero[i] = uint64(i)
	}
	firstTable := map[uint64][]byte{}
	for g := range uint64(512) {
		firstTable[g] = fill(byte(g), SectorSize)
	}
	tests := []struct {
		name   string
		spec   spec
		shared bool // point every directory entry at the first table
		kind   layer.Kind
	}{
		{name: "unallocated", spec: spec{capacity: grains, grain: 1, gtes: 512, noRGD: true}, kind: layer.Unallocated},
		{name: "unallocated shared", spec: spec{capacity: grains, grain: 1, gtes: 512, noRGD: true}, shared: true, kind: layer.Unallocated},
		{name: "zeroed", spec: spec{capacity: grains, grain: 1, gtes: 512, noRGD: true, zeroed: true, zeros: allZero}, kind: layer.Zero},
		{name: "compressed shared", spec: spec{capacity: grains, grain: 1, gtes: 512, noRGD: true, compressed: true, grains: firstTable}, shared: true, kind: layer.Data},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := build(tt.spec)
			if tt.shared {
				img, err := Open(bytes.NewReader(b), int64(len(b)))
				if err != nil {
					t.Fatal(err)
				}
				gd := img.GD()
				for i := range gd {
					binary.LittleEndian.PutUint32(b[img.GDOffset()+int64(4*i):], gd[0])
				}
			}
			img, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			e, err := img.Extent(0)
			if err != nil {
				t.Fatal(err)
			}
			if e.Kind != tt.kind || e.Length != img.VirtualSize() {
				t.Errorf("Extent(0) = %+v, want one %v extent of %d bytes", e, tt.kind, img.VirtualSize())
			}
			// Reads agree with the extent: the last grain reads as the
			// first grain of the first table (shared) or as zeros.
			want := make([]byte, SectorSize)
			if tt.kind == layer.Data {
				want = fill(byte((grains-1)%512%256), SectorSize)
			}
			got := make([]byte, SectorSize)
			if _, err := img.ReadAt(got, img.VirtualSize()-SectorSize); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("last grain reads %x..., want %x...", got[:8], want[:8])
			}
		})
	}
}

// TestMixedGrainTableNotUniform checks that a table with one data grain is
// still walked grain by grain.
func TestMixedGrainTableNotUniform(t *testing.T) {
	s := spec{capacity: 2048, grain: 1, gtes: 512, noRGD: true, grains: map[uint64][]byte{700: fill(7, SectorSize)}}
	b := build(s)
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var got []layer.Extent
	for off := int64(0); off < img.VirtualSize(); {
		e, err := img.Extent(off)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
		off = e.End()
	}
	want := []layer.Kind{layer.Unallocated, layer.Data, layer.Unallocated}
	if len(got) != len(want) || got[1].Start != 700*SectorSize || got[1].Length != SectorSize {
		t.Fatalf("extents %+v, want unallocated, data at grain 700, unallocated", got)
	}
	for i, e := range got {
		if e.Kind != want[i] {
			t.Errorf("extent %d is %v, want %v", i, e.Kind, want[i])
		}
	}
}
