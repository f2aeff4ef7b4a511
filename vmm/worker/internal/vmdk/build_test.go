package vmdk

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"slices"
)

// spec describes a small vmdk that build writes byte by byte, for tests and fuzz
// seeds that must not depend on qemu.
type spec struct {
	capacity   uint64 // sectors
	grain      uint64 // sectors
	gtes       uint32
	zeroed     bool // FlagZeroedGrain
	compressed bool // streamOptimized grains with markers
	noMarkers  bool // compressed grains without markers
	footer     bool // GDOffset = GDAtEnd, VMware stream layout
	noRGD      bool
	desc       string            // "" for a default monolithicSparse descriptor
	descArea   uint64            // descriptor sectors; 0 for just enough
	grains     map[uint64][]byte // grain index -> content (at most a grain)
	zeros      []uint64          // grain indexes marked zeroed (GTE 1)
}

// content returns the guest bytes s describes.
func (s spec) content() []byte {
	b := make([]byte, s.capacity*SectorSize)
	for g, d := range s.grains {
		copy(b[g*s.grain*SectorSize:], d)
	}
	return b
}

func (s spec) descriptor() string {
	if s.desc != "" {
		return s.desc
	}
	ct := "monolithicSparse"
	if s.compressed {
		ct = "streamOptimized"
	}
	return fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType=\"%s\"\n\n"+
		"# Extent description\nRW %d SPARSE \"t.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n",
		ct, s.capacity)
}

func sectorsFor(n int) uint64 { return uint64((n + SectorSize - 1) / SectorSize) }

func marker(val uint64, size, typ uint32) []byte {
	m := make([]byte, SectorSize)
	binary.LittleEndian.PutUint64(m, val)
	binary.LittleEndian.PutUint32(m[8:], size)
	binary.LittleEndian.PutUint32(m[12:], typ)
	return m
}

// build writes the image s describes.
func build(s spec) []byte {
	grainBytes := int(s.grain * SectorSize)
	perGT := uint64(s.gtes)
	nGrains := (s.capacity + s.grain - 1) / s.grain
	nGT := (nGrains + perGT - 1) / perGT
	gtSectors := sectorsFor(int(perGT) * 4)
	gdSectors := sectorsFor(int(nGT) * 4)
	desc := s.descriptor()
	descSectors := max(s.descArea, sectorsFor(len(desc)+1))

	h := Header{
		Version: 1, Flags: FlagNewlineDetect, Capacity: s.capacity, GrainSize: s.grain,
		DescriptorOffset: 1, DescriptorSize: descSectors, NumGTEsPerGT: s.gtes,
		CheckBytes: [4]byte{'\n', ' ', '\r', '\n'},
	}
	if s.zeroed {
		h.Flags |= FlagZeroedGrain
		h.Version = 2
	}
	if s.compressed {
		h.Version = 3
		h.CompressAlgorithm = CompressDeflate
		h.Flags |= FlagCompressed
		if !s.noMarkers {
			h.Flags |= FlagMarkers
		}
	}
	gte := make([]uint32, nGT*perGT)
	for _, g := range s.zeros {
		gte[g] = 1
	}
	put := func(b []byte, at uint64, data []byte) []byte {
		end := int(at*SectorSize) + len(data)
		if len(b) < end {
			b = append(b, make([]byte, end-len(b))...)
		}
		copy(b[at*SectorSize:], data)
		return b
	}
	pad := func(b []byte) []byte {
		if r := len(b) % SectorSize; r != 0 {
			b = append(b, make([]byte, SectorSize-r)...)
		}
		return b
	}
	u32s := func(v []uint32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], x)
		}
		return b
	}
	keys := make([]uint64, 0, len(s.grains))
	for g := range s.grains {
		keys = append(keys, g)
	}
	slices.Sort(keys)

	var out []byte
	if s.footer {
		// VMware stream: header, descriptor, grains, then each GT after a GT
		// marker, the GD after a GD marker, the footer and end of stream.
		hdr := h
		hdr.GDOffset = GDAtEnd
		out, _ = hdr.AppendBinary(nil)
		out = pad(out)
		out = put(out, 1, []byte(desc))
		out = pad(append(out, make([]byte, descSectors*SectorSize-uint64(len(desc)))...))
		h.OverHead = uint64(len(out)) / SectorSize
		hdr.OverHead = h.OverHead
		b, _ := hdr.AppendBinary(nil)
		copy(out, b)
		for _, g := range keys {
			gte[g] = uint32(len(out) / SectorSize)
			out = pad(append(out, compressGrain(s, g, grainBytes)...))
		}
		gd := make([]uint32, nGT)
		for i := range nGT {
			out = append(out, marker(gtSectors, 0, MarkerGT)...)
			gd[i] = uint32(len(out) / SectorSize)
			out = pad(append(out, u32s(gte[i*perGT:(i+1)*perGT])...))
		}
		out = append(out, marker(gdSectors, 0, MarkerGD)...)
		h.GDOffset = uint64(len(out) / SectorSize)
		out = pad(append(out, u32s(gd)...))
		out = append(out, marker(1, 0, MarkerFooter)...)
		b, _ = h.AppendBinary(nil)
		out = pad(append(out, b...))
		out = append(out, marker(0, 0, MarkerEOS)...)
		return out
	}

	next := 1 + descSectors
	if !s.noRGD {
		h.Flags |= FlagRedundantGD
		h.RGDOffset = next
		next += gdSectors + nGT*gtSectors
	}
	h.GDOffset = next
	next += gdSectors + nGT*gtSectors
	h.OverHead = next
	out, _ = h.AppendBinary(nil)
	out = pad(out)
	out = put(out, 1, []byte(desc))
	out = put(out, next, nil)
	for _, g := range keys {
		gte[g] = uint32(len(out) / SectorSize)
		if s.compressed {
			out = pad(append(out, compressGrain(s, g, grainBytes)...))
		} else {
			d := make([]byte, grainBytes)
			copy(d, s.grains[g])
			out = append(out, d...)
		}
	}
	for _, base := range []uint64{h.RGDOffset, h.GDOffset} {
		if base == 0 {
			continue
		}
		gd := make([]uint32, nGT)
		for i := range nGT {
			gd[i] = uint32(base + gdSectors + uint64(i)*gtSectors)
			out = put(out, uint64(gd[i]), u32s(gte[i*perGT:(i+1)*perGT]))
		}
		out = put(out, base, u32s(gd))
	}
	return out
}

func compressGrain(s spec, g uint64, grainBytes int) []byte {
	d := make([]byte, grainBytes)
	copy(d, s.grains[g])
	if used := int(s.capacity*SectorSize) - int(g)*grainBytes; used < grainBytes {
		d = d[:used]
	}
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(d)
	zw.Close()
	if s.noMarkers {
		return z.Bytes()
	}
	m := make([]byte, 12)
	binary.LittleEndian.PutUint64(m, g*s.grain)
	binary.LittleEndian.PutUint32(m[8:], uint32(z.Len()))
	return append(m, z.Bytes()...)
}

// fill returns n bytes of a pattern seeded by b.
func fill(b byte, n int) []byte {
	d := make([]byte, n)
	for i := range d {
		d[i] = b + byte(i*7)
	}
	return d
}
