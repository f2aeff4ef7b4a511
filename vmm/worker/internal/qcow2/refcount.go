package qcow2

import "encoding/binary"

// RefcountTable reads the refcount table (refcount_table_clusters clusters of
// raw 64-bit entries; mask with RefcountTableOffsetMask for block offsets).
// Its size is bounded by ParseHeader.
func (img *Image) RefcountTable() ([]uint64, error) {
	n := int(uint64(img.h.RefcountTableClusters) << img.h.ClusterBits / 8)
	return readTable(img.r, int64(img.h.RefcountTableOffset), n)
}

// RefcountEntries is the number of refcounts in one refcount block.
func (h *Header) RefcountEntries() int64 {
	return h.ClusterSize() * 8 >> h.RefcountOrder
}

// RefcountBlock is one refcount block as read from the file.
type RefcountBlock struct {
	Offset int64 // host offset of the block
	data   []byte
	order  uint32
}

// ReadRefcountBlock reads the refcount block at host offset off, which must
// be cluster aligned and inside the file.
func (img *Image) ReadRefcountBlock(off int64) (*RefcountBlock, error) {
	cs := img.h.ClusterSize()
	if off <= 0 || off&(cs-1) != 0 {
		return nil, corrupt("refcount block offset %#x is not a valid cluster offset", off)
	}
	if off > img.fileSize-cs {
		return nil, corrupt("refcount block at %#x extends past the end of the file (%d bytes)", off, img.fileSize)
	}
	buf := make([]byte, cs)
	if err := readFull(img.r, buf, off); err != nil {
		return nil, err
	}
	return NewRefcountBlock(off, buf, img.h.RefcountOrder), nil
}

// NewRefcountBlock wraps the bytes of a refcount block with refcount width
// 1<<order bits (order 0..6).
func NewRefcountBlock(off int64, data []byte, order uint32) *RefcountBlock {
	return &RefcountBlock{Offset: off, data: data, order: order & 7}
}

// Len is the number of refcounts in the block.
func (b *RefcountBlock) Len() int { return len(b.data) * 8 >> b.order }

// nextNonZero returns the first index from i on whose refcount is not zero,
// or Len() when there is none; it skips zero bytes eight at a time.
func (b *RefcountBlock) nextNonZero(i int) int {
	n := b.Len()
	per := 64 >> b.order // refcounts in eight bytes
	for i < n {
		if i%per == 0 && i+per <= n && binary.LittleEndian.Uint64(b.data[i/per*8:]) == 0 {
			i += per
			continue
		}
		if b.Get(i) != 0 {
			return i
		}
		i++
	}
	return n
}

// Bytes returns the block's bytes.
func (b *RefcountBlock) Bytes() []byte { return b.data }

// Get returns refcount i (0 <= i < Len()). Sub-byte refcounts are packed
// from the least significant bit of each byte, wider ones are big-endian.
func (b *RefcountBlock) Get(i int) uint64 {
	switch b.order {
	case 0, 1, 2:
		bits := uint(1) << b.order
		per := 8 / bits
		shift := uint(i%int(per)) * bits
		return uint64(b.data[i/int(per)]>>shift) & (1<<bits - 1)
	case 3:
		return uint64(b.data[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(b.data[2*i:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(b.data[4*i:]))
	}
	return binary.BigEndian.Uint64(b.data[8*i:])
}
