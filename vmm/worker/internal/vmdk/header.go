package vmdk

import (
	"encoding/binary"

	"instarfs/errcode"
)

// SectorSize is the unit of every offset and size in a sparse extent header.
const SectorSize = 512

// HeaderSize is the size of a SparseExtentHeader on disk, magic included. The rest
// of sector 0 is padding.
const HeaderSize = 79

// Magic numbers, as the first four bytes of the file.
const (
	// MagicSparse ("KDMV") starts a hosted sparse extent (monolithicSparse,
	// streamOptimized).
	MagicSparse = "KDMV"
	// MagicCOWD ("COWD") starts an ESX vmfsSparse extent, which is not supported.
	MagicCOWD = "COWD"
)

// Header flags.
const (
	FlagNewlineDetect = 1 << 0  // the check bytes are valid
	FlagRedundantGD   = 1 << 1  // a redundant grain directory is kept at RGDOffset
	FlagZeroedGrain   = 1 << 2  // a grain table entry of 1 means a zeroed grain
	FlagCompressed    = 1 << 16 // grains are compressed
	FlagMarkers       = 1 << 17 // compressed grains and metadata carry markers
)

// CompressDeflate is the only compression algorithm: zlib-wrapped deflate.
const CompressDeflate = 1

// GDAtEnd in GDOffset says that the grain directory is written at the end of a
// stream and the header that matters is the footer near the end of the file.
const GDAtEnd = 0xffffffffffffffff

// Stream marker types (the u32 after the u64 value and the u32 size of zero).
const (
	MarkerEOS    = 0
	MarkerGT     = 1
	MarkerGD     = 2
	MarkerFooter = 3
)

// Limits. They follow qemu where qemu has one and are tighter where qemu would
// allocate without bound.
const (
	// MaxGTEsPerGT is the largest number of grain table entries qemu accepts.
	MaxGTEsPerGT = 512
	// MaxGrainSectors is qemu's limit on the grain size (1 GiB).
	MaxGrainSectors = 0x200000
	// MaxCompressedGrainSectors limits the grain size of compressed images, whose
	// grains are decompressed whole in memory (8 MiB; VMware uses 64 KiB).
	MaxCompressedGrainSectors = 16384
	// MaxGDEntries is qemu's limit on the number of grain directory entries.
	MaxGDEntries = 32 * 1024 * 1024
	// MaxCapacity is the largest capacity in sectors whose size in bytes fits in
	// an int64.
	MaxCapacity = (1<<63 - 1) / SectorSize
	// qemuDescWindow is how much of the embedded descriptor qemu reads (20
	// sectors from byte 512, the last byte forced to NUL).
	qemuDescWindow = 20 * SectorSize
)

// Header is a SparseExtentHeader, field for field, little-endian on disk.
// Offsets and sizes are in sectors.
type Header struct {
	Version           uint32
	Flags             uint32
	Capacity          uint64 // virtual size in sectors
	GrainSize         uint64 // grain size in sectors
	DescriptorOffset  uint64
	DescriptorSize    uint64
	NumGTEsPerGT      uint32
	RGDOffset         uint64 // redundant grain directory
	GDOffset          uint64 // grain directory (the one qemu reads)
	OverHead          uint64 // sectors before the first grain
	UncleanShutdown   uint8
	CheckBytes        [4]byte // "\n \r\n"
	CompressAlgorithm uint16
}

// ParseHeader decodes a header from b, which starts with the magic and holds at
// least HeaderSize bytes. It checks only the magic; Open validates the rest.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, errcode.New(errcode.VmdkBadHeader, "vmdk header is truncated (%d bytes)", len(b))
	}
	if string(b[:4]) != MagicSparse {
		return Header{}, errcode.New(errcode.VmdkBadHeader, "not a vmdk sparse extent: magic %q", b[:4])
	}
	le := binary.LittleEndian
	h := Header{
		Version:           le.Uint32(b[4:]),
		Flags:             le.Uint32(b[8:]),
		Capacity:          le.Uint64(b[12:]),
		GrainSize:         le.Uint64(b[20:]),
		DescriptorOffset:  le.Uint64(b[28:]),
		DescriptorSize:    le.Uint64(b[36:]),
		NumGTEsPerGT:      le.Uint32(b[44:]),
		RGDOffset:         le.Uint64(b[48:]),
		GDOffset:          le.Uint64(b[56:]),
		OverHead:          le.Uint64(b[64:]),
		UncleanShutdown:   b[72],
		CompressAlgorithm: le.Uint16(b[77:]),
	}
	copy(h.CheckBytes[:], b[73:77])
	return h, nil
}

// AppendBinary appends the HeaderSize bytes of h, magic included, to b. Parsing
// and appending round-trip byte for byte.
func (h Header) AppendBinary(b []byte) ([]byte, error) {
	le := binary.LittleEndian
	b = append(b, MagicSparse...)
	b = le.AppendUint32(b, h.Version)
	b = le.AppendUint32(b, h.Flags)
	b = le.AppendUint64(b, h.Capacity)
	b = le.AppendUint64(b, h.GrainSize)
	b = le.AppendUint64(b, h.DescriptorOffset)
	b = le.AppendUint64(b, h.DescriptorSize)
	b = le.AppendUint32(b, h.NumGTEsPerGT)
	b = le.AppendUint64(b, h.RGDOffset)
	b = le.AppendUint64(b, h.GDOffset)
	b = le.AppendUint64(b, h.OverHead)
	b = append(b, h.UncleanShutdown)
	b = append(b, h.CheckBytes[:]...)
	b = le.AppendUint16(b, h.CompressAlgorithm)
	return b, nil
}

// Compressed reports whether grains are compressed. Like qemu, it looks at the
// compression algorithm, not at FlagCompressed.
func (h Header) Compressed() bool { return h.CompressAlgorithm == CompressDeflate }

// HasMarkers reports whether compressed grains start with a grain marker.
func (h Header) HasMarkers() bool { return h.Flags&FlagMarkers != 0 }

// ZeroedGrains reports whether a grain table entry of 1 means a zeroed grain.
func (h Header) ZeroedGrains() bool { return h.Flags&FlagZeroedGrain != 0 }

// HasRGD reports whether a redundant grain directory is kept: qemu keeps it in
// step only when the flag is set and the offset is not zero.
func (h Header) HasRGD() bool { return h.Flags&FlagRedundantGD != 0 && h.RGDOffset != 0 }

// gdEntries returns the number of grain directory entries for h, or false when
// it cannot be computed (zero grain size or table size).
func (h Header) gdEntries() (uint64, bool) {
	per := uint64(h.NumGTEsPerGT) * h.GrainSize // sectors covered by one GT
	if h.NumGTEsPerGT == 0 || h.GrainSize == 0 || per/h.GrainSize != uint64(h.NumGTEsPerGT) {
		return 0, false
	}
	n := h.Capacity / per
	if h.Capacity%per != 0 {
		n++
	}
	return n, true
}

// validate checks what the reader relies on, for a file of size bytes.
func (h Header) validate(size int64) error {
	if h.Version > 3 {
		return errcode.New(errcode.VmdkUnsupported, "unsupported vmdk version %d", h.Version)
	}
	if h.CompressAlgorithm > CompressDeflate {
		return errcode.New(errcode.VmdkUnsupported, "unsupported vmdk compression algorithm %d", h.CompressAlgorithm)
	}
	if h.NumGTEsPerGT == 0 || h.NumGTEsPerGT > MaxGTEsPerGT {
		return errcode.New(errcode.VmdkBadHeader, "invalid number of grain table entries %d (want 1 to %d)", h.NumGTEsPerGT, MaxGTEsPerGT)
	}
	if h.GrainSize == 0 || h.GrainSize > MaxGrainSectors {
		return errcode.New(errcode.VmdkBadHeader, "invalid grain size of %d sectors", h.GrainSize)
	}
	if h.Compressed() && h.GrainSize > MaxCompressedGrainSectors {
		return errcode.New(errcode.VmdkUnsupported, "compressed grains of %d sectors are larger than the supported %d", h.GrainSize, MaxCompressedGrainSectors)
	}
	if h.Capacity > MaxCapacity {
		return errcode.New(errcode.VmdkBadHeader, "vmdk capacity of %d sectors is too large", h.Capacity)
	}
	n, ok := h.gdEntries()
	if !ok || n > MaxGDEntries {
		return errcode.New(errcode.VmdkBadHeader, "vmdk grain directory of %d entries is too large", n)
	}
	sectors := (uint64(size) + SectorSize - 1) / SectorSize
	if h.OverHead > sectors {
		return errcode.New(errcode.VmdkCorrupt, "vmdk file is truncated: expecting at least %d sectors, have %d", h.OverHead, sectors)
	}
	return nil
}
