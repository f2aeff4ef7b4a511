package qcow2

import (
	"instarfs/errcode"
)

// Bits of L1 and L2 entries.
const (
	// OflagCopied (bit 63) marks an L1 or standard L2 entry whose refcount is 1.
	OflagCopied uint64 = 1 << 63
	// OflagCompressed (bit 62) marks a compressed cluster descriptor.
	OflagCompressed uint64 = 1 << 62
	// OflagZero (bit 0) marks a standard L2 entry that reads as zero. With
	// extended L2 entries it is reserved; the bitmap says which subclusters
	// read as zero.
	OflagZero uint64 = 1 << 0

	// L1OffsetMask selects the L2 table offset of an L1 entry (bits 9-55).
	L1OffsetMask uint64 = 0x00fffffffffffe00
	// L2OffsetMask selects the host cluster offset of a standard L2 entry.
	L2OffsetMask uint64 = 0x00fffffffffffe00
	// L1ReservedMask is the set of reserved L1 entry bits (0-8, 56-62).
	L1ReservedMask uint64 = 0x7f000000000001ff
	// L2ReservedMask is the set of reserved standard L2 entry bits (1-8,
	// 56-61). Bit 0 is also reserved in extended L2 entries.
	L2ReservedMask uint64 = 0x3f000000000001fe
	// RefcountTableOffsetMask selects the refcount block offset of a refcount
	// table entry (bits 9-63).
	RefcountTableOffsetMask uint64 = 0xfffffffffffffe00

	// CompressedSectorSize is the unit of a compressed descriptor's length.
	CompressedSectorSize = 512

	// Extended L2 bitmap halves.
	BitmapAllocMask uint64 = 0x00000000ffffffff
	BitmapZeroMask  uint64 = 0xffffffff00000000
)

// ClusterType is what the first word of an L2 entry says about a cluster.
type ClusterType uint8

const (
	// ClusterUnallocated has no host cluster (offset 0). With extended L2
	// entries, its subclusters may still read as zero.
	ClusterUnallocated ClusterType = iota
	// ClusterNormal has a host cluster. With extended L2 entries the bitmap
	// says which subclusters hold data.
	ClusterNormal
	// ClusterZeroPlain reads as zero and has no host cluster (standard L2 only).
	ClusterZeroPlain
	// ClusterZeroAlloc reads as zero and keeps a host cluster (standard L2 only).
	ClusterZeroAlloc
	// ClusterCompressed is stored compressed.
	ClusterCompressed
)

func (t ClusterType) String() string {
	switch t {
	case ClusterNormal:
		return "normal"
	case ClusterZeroPlain:
		return "zero-plain"
	case ClusterZeroAlloc:
		return "zero-alloc"
	case ClusterCompressed:
		return "compressed"
	}
	return "unallocated"
}

// SubclusterType is the state of one subcluster (or of a whole cluster with
// standard L2 entries), following qemu's QCow2SubclusterType.
type SubclusterType uint8

const (
	// SubclusterUnallocatedPlain: no host cluster; reads from the backing file.
	SubclusterUnallocatedPlain SubclusterType = iota
	// SubclusterUnallocatedAlloc: the host cluster exists but this subcluster
	// is not allocated; reads from the backing file (extended L2 only).
	SubclusterUnallocatedAlloc
	// SubclusterNormal: data at the host offset.
	SubclusterNormal
	// SubclusterZeroPlain: reads as zero, no host cluster.
	SubclusterZeroPlain
	// SubclusterZeroAlloc: reads as zero, host cluster kept.
	SubclusterZeroAlloc
	// SubclusterCompressed: the whole cluster is compressed.
	SubclusterCompressed
	// SubclusterInvalid: the extended L2 bitmap is inconsistent (a subcluster
	// both allocated and zero, or allocation bits without a host cluster).
	SubclusterInvalid
)

func (t SubclusterType) String() string {
	switch t {
	case SubclusterUnallocatedAlloc:
		return "unallocated-alloc"
	case SubclusterNormal:
		return "normal"
	case SubclusterZeroPlain:
		return "zero-plain"
	case SubclusterZeroAlloc:
		return "zero-alloc"
	case SubclusterCompressed:
		return "compressed"
	case SubclusterInvalid:
		return "invalid"
	}
	return "unallocated-plain"
}

// L2Entry is a decoded L2 table entry.
type L2Entry struct {
	Raw    uint64 // the entry's first (or only) word
	Bitmap uint64 // the subcluster bitmap of an extended entry; 0 otherwise
	Type   ClusterType
	// HostOffset is the host cluster offset (Normal, ZeroAlloc, and a Normal
	// extended entry whatever its bitmap), or the byte offset of the
	// compressed data (Compressed). 0 otherwise.
	HostOffset int64
	// CompressedSize is the number of bytes the compressed descriptor covers:
	// its 512-byte sectors minus the offset into the first one. The data may
	// end earlier; the last sector may be cut short by the end of the file.
	CompressedSize int64
	Copied         bool
	extended       bool
}

// DecodeL2Entry decodes an L2 entry. bitmap is the second word of an
// extended entry and is ignored for standard entries. Offsets are decoded
// as stored; their alignment and range are checked by the reader, not here.
func (h *Header) DecodeL2Entry(raw, bitmap uint64) L2Entry {
	e := L2Entry{Raw: raw, Copied: raw&OflagCopied != 0, extended: h.ExtendedL2()}
	if e.extended {
		e.Bitmap = bitmap
	}
	switch {
	case raw&OflagCompressed != 0:
		e.Type = ClusterCompressed
		shift := 62 - (h.ClusterBits - 8)
		e.HostOffset = int64(raw & (uint64(1)<<shift - 1))
		sectors := int64((raw>>shift)&(uint64(1)<<(h.ClusterBits-8)-1)) + 1
		e.CompressedSize = sectors*CompressedSectorSize - e.HostOffset&(CompressedSectorSize-1)
	case raw&OflagZero != 0 && !e.extended:
		e.HostOffset = int64(raw & L2OffsetMask)
		if e.HostOffset != 0 {
			e.Type = ClusterZeroAlloc
		} else {
			e.Type = ClusterZeroPlain
		}
	case raw&L2OffsetMask == 0:
		e.Type = ClusterUnallocated
	default:
		e.Type = ClusterNormal
		e.HostOffset = int64(raw & L2OffsetMask)
	}
	return e
}

// Reserved returns the reserved bits set in a standard (non-compressed)
// entry; 0 for compressed entries.
func (e L2Entry) Reserved() uint64 {
	if e.Type == ClusterCompressed {
		return 0
	}
	m := L2ReservedMask
	if e.extended {
		m |= OflagZero
	}
	return e.Raw & m
}

// Subcluster returns the state of subcluster i (0..31) of an extended entry.
// For a standard entry it returns the state of the whole cluster, whatever i.
func (e L2Entry) Subcluster(i int) SubclusterType {
	if !e.extended {
		switch e.Type {
		case ClusterNormal:
			return SubclusterNormal
		case ClusterZeroPlain:
			return SubclusterZeroPlain
		case ClusterZeroAlloc:
			return SubclusterZeroAlloc
		case ClusterCompressed:
			return SubclusterCompressed
		}
		return SubclusterUnallocatedPlain
	}
	alloc := uint64(1) << uint(i&31)
	zero := alloc << 32
	switch e.Type {
	case ClusterCompressed:
		return SubclusterCompressed
	case ClusterNormal:
		switch {
		case (e.Bitmap>>32)&e.Bitmap != 0:
			return SubclusterInvalid
		case e.Bitmap&zero != 0:
			return SubclusterZeroAlloc
		case e.Bitmap&alloc != 0:
			return SubclusterNormal
		}
		return SubclusterUnallocatedAlloc
	default:
		switch {
		case e.Bitmap&BitmapAllocMask != 0:
			return SubclusterInvalid
		case e.Bitmap&zero != 0:
			return SubclusterZeroPlain
		}
		return SubclusterUnallocatedPlain
	}
}

// L2Table is one L2 table as read from the file. It is shared with the
// reader's cache: do not modify it.
type L2Table struct {
	Offset int64 // host offset of the table
	data   []byte
	h      *Header

	// runs remembers where runs of units sharing one mapping end, as
	// Image.extent found them, in guest bytes from the table's start. It is
	// used under Image.mu.
	runs    [16]l2Run
	nextRun int
}

// l2Run is a run of units of an L2 table: [from, to) in guest bytes from the
// table's start.
type l2Run struct{ from, to int64 }

// run returns the end of the run that starts at from, if it is remembered.
func (t *L2Table) run(from int64) (int64, bool) {
	for _, r := range t.runs {
		if r.to > r.from && r.from == from {
			return r.to, true
		}
	}
	return 0, false
}

// setRun remembers the run [from, to), replacing the oldest one.
func (t *L2Table) setRun(from, to int64) {
	t.runs[t.nextRun] = l2Run{from, to}
	t.nextRun = (t.nextRun + 1) % len(t.runs)
}

// Len is the number of entries in the table.
func (t *L2Table) Len() int { return len(t.data) / t.h.L2EntrySize() }

// Raw returns the two words of entry i (bitmap is 0 for standard entries).
func (t *L2Table) Raw(i int) (entry, bitmap uint64) {
	if t.h.ExtendedL2() {
		return be64(t.data[16*i:]), be64(t.data[16*i+8:])
	}
	return be64(t.data[8*i:]), 0
}

// zeroEntries returns how many entries from i on are all zero bytes.
func (t *L2Table) zeroEntries(i int) int {
	es := t.h.L2EntrySize()
	p := t.data[i*es:]
	w := 0
	for w*8+8 <= len(p) && be64(p[w*8:]) == 0 {
		w++
	}
	return w * 8 / es
}

// Entry decodes entry i.
func (t *L2Table) Entry(i int) L2Entry {
	raw, bm := t.Raw(i)
	return t.h.DecodeL2Entry(raw, bm)
}

// Bytes returns the table's bytes (read-only).
func (t *L2Table) Bytes() []byte { return t.data }

func corrupt(format string, args ...any) error {
	return errcode.New(errcode.Qcow2Corrupt, "qcow2: "+format, args...)
}
