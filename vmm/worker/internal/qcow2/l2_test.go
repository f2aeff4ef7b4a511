package qcow2

import (
	"encoding/binary"
	"testing"
)

func TestDecodeL2Entry(t *testing.T) {
	cases := []struct {
		name       string
		bits       uint32
		extended   bool
		raw        uint64
		typ        ClusterType
		host, size int64
		copied     bool
		reserved   uint64
	}{
		{"unallocated", 16, false, 0, ClusterUnallocated, 0, 0, false, 0},
		{"normal", 16, false, 0x8000000000050000, ClusterNormal, 0x50000, 0, true, 0},
		{"normal without copied", 16, false, 0x0000000000050000, ClusterNormal, 0x50000, 0, false, 0},
		{"zero plain", 16, false, 1, ClusterZeroPlain, 0, 0, false, 0},
		{"zero alloc", 16, false, 0x8000000000050001, ClusterZeroAlloc, 0x50000, 0, true, 0},
		{"reserved bits", 16, false, 0x0100000000050102, ClusterNormal, 0x50000, 0, false, 0x0100000000000102},
		{"extended zero bit is reserved", 16, true, 0x8000000000050001, ClusterNormal, 0x50000, 0, true, 1},
		{"extended unallocated with bit 0", 16, true, 1, ClusterUnallocated, 0, 0, false, 1},
		// x = 62 - (16 - 8) = 54; 3 additional sectors.
		{"compressed 64k", 16, false, 1<<62 | 3<<54 | 0x12345, ClusterCompressed, 0x12345, 4*512 - 0x145, false, 0},
		// x = 61; one size bit.
		{"compressed 512", 9, false, 1<<62 | 1<<61 | 0x1000, ClusterCompressed, 0x1000, 1024, false, 0},
		// x = 49; 13 size bits.
		{"compressed 2M", 21, false, 1<<62 | 8191<<49 | 0x200, ClusterCompressed, 0x200, 8192 * 512, false, 0},
		{"compressed with copied", 16, false, 1<<63 | 1<<62 | 0x10000, ClusterCompressed, 0x10000, 512, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := &Header{ClusterBits: tc.bits}
			if tc.extended {
				h.IncompatibleFeatures = IncompatExtendedL2
			}
			e := h.DecodeL2Entry(tc.raw, 0)
			if e.Type != tc.typ || e.HostOffset != tc.host || e.CompressedSize != tc.size || e.Copied != tc.copied || e.Reserved() != tc.reserved {
				t.Errorf("DecodeL2Entry(%#x) = %+v reserved %#x", tc.raw, e, e.Reserved())
			}
		})
	}
}

func TestSubcluster(t *testing.T) {
	ext := &Header{ClusterBits: 16, IncompatibleFeatures: IncompatExtendedL2}
	std := &Header{ClusterBits: 16}
	cases := []struct {
		name   string
		h      *Header
		raw    uint64
		bitmap uint64
		want   map[int]SubclusterType
	}{
		{"standard normal", std, 0x50000, 0xffffffff, map[int]SubclusterType{0: SubclusterNormal, 31: SubclusterNormal}},
		{"standard zero alloc", std, 0x50001, 0, map[int]SubclusterType{3: SubclusterZeroAlloc}},
		{"standard compressed", std, 1 << 62, 0, map[int]SubclusterType{0: SubclusterCompressed}},
		{"allocated cluster", ext, 0x50000, 0x0000000200000005, map[int]SubclusterType{
			0: SubclusterNormal, 1: SubclusterZeroAlloc, 2: SubclusterNormal, 3: SubclusterUnallocatedAlloc, 31: SubclusterUnallocatedAlloc}},
		{"unallocated cluster", ext, 0, 0x8000000100000000, map[int]SubclusterType{
			0: SubclusterZeroPlain, 1: SubclusterUnallocatedPlain, 31: SubclusterZeroPlain}},
		{"alloc and zero", ext, 0x50000, 0x0000000100000001, map[int]SubclusterType{0: SubclusterInvalid, 5: SubclusterInvalid}},
		{"alloc without cluster", ext, 0, 0x4, map[int]SubclusterType{0: SubclusterInvalid}},
		{"compressed ignores bitmap", ext, 1 << 62, 0xffffffffffffffff, map[int]SubclusterType{0: SubclusterCompressed}},
	}
	for _, tc := range cases {
		e := tc.h.DecodeL2Entry(tc.raw, tc.bitmap)
		for i, want := range tc.want {
			if got := e.Subcluster(i); got != want {
				t.Errorf("%s: Subcluster(%d) = %v, want %v", tc.name, i, got, want)
			}
		}
	}
}

func TestRefcountBlockGet(t *testing.T) {
	for order := uint32(0); order <= 6; order++ {
		bits := 1 << order
		data := make([]byte, 512)
		n := len(data) * 8 / bits
		want := make([]uint64, n)
		for i := range want {
			v := uint64(i)*0x9e3779b97f4a7c15 + 12345
			if bits < 64 {
				v &= 1<<bits - 1
			}
			want[i] = v
			// Independent encoder: sub-byte values packed from the least
			// significant bit, wider ones big-endian.
			switch {
			case bits < 8:
				per := 8 / bits
				data[i/per] |= byte(v) << ((i % per) * bits)
			case bits == 8:
				data[i] = byte(v)
			case bits == 16:
				binary.BigEndian.PutUint16(data[2*i:], uint16(v))
			case bits == 32:
				binary.BigEndian.PutUint32(data[4*i:], uint32(v))
			default:
				binary.BigEndian.PutUint64(data[8*i:], v)
			}
		}
		b := NewRefcountBlock(0x10000, data, order)
		if b.Len() != n {
			t.Fatalf("order %d: Len() = %d, want %d", order, b.Len(), n)
		}
		for i, w := range want {
			if got := b.Get(i); got != w {
				t.Fatalf("order %d: Get(%d) = %#x, want %#x", order, i, got, w)
			}
		}
	}
}

func TestRefcountBlockNextNonZero(t *testing.T) {
	for order := uint32(0); order <= 6; order++ {
		data := make([]byte, 512)
		b := NewRefcountBlock(0x10000, data, order)
		// Lone set bits, at the edges of the 8-byte words and inside them.
		for _, bit := range []int{0, 7, 63, 64, 65, 200, 1023, 2048, 4095} {
			data[bit/8] |= 1 << (bit % 8)
		}
		for from := 0; from <= b.Len(); from++ {
			want := from
			for want < b.Len() && b.Get(want) == 0 {
				want++
			}
			if got := b.nextNonZero(from); got != want {
				t.Fatalf("order %d: nextNonZero(%d) = %d, want %d", order, from, got, want)
			}
		}
	}
}

func TestZeroEntries(t *testing.T) {
	// A table of 8 entries (a cluster of 64 or 128 bytes) with entry 3 set,
	// in one word (standard) or in the bitmap word only (extended).
	cases := []struct {
		name     string
		extended bool
		from     int
		want     int
	}{
		{"standard from 0", false, 0, 3},
		{"standard at the set entry", false, 3, 0},
		{"standard to the end", false, 4, 4},
		{"extended from 0", true, 0, 3},
		{"extended at the set entry", true, 3, 0},
		{"extended to the end", true, 4, 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := &Header{ClusterBits: 6}
			if c.extended {
				h.ClusterBits, h.IncompatibleFeatures = 7, IncompatExtendedL2
			}
			tab := &L2Table{data: make([]byte, h.ClusterSize()), h: h}
			if c.extended {
				binary.BigEndian.PutUint64(tab.data[16*3+8:], 1) // bitmap: subcluster 0 allocated
			} else {
				binary.BigEndian.PutUint64(tab.data[8*3:], 0x8000000000050000)
			}
			if got := tab.zeroEntries(c.from); got != c.want {
				t.Errorf("zeroEntries(%d) = %d, want %d", c.from, got, c.want)
			}
		})
	}
}
