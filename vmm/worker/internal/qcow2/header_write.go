package qcow2

import (
	"encoding/binary"

	"instarfs/errcode"
)

// featureNameTable is the feature name table qemu 7.2 writes, in its order.
var featureNameTable = []FeatureName{
	{Type: 0, Bit: 0, Name: "dirty bit"},
	{Type: 0, Bit: 1, Name: "corrupt bit"},
	{Type: 0, Bit: 2, Name: "external data file"},
	{Type: 0, Bit: 3, Name: "compression type"},
	{Type: 0, Bit: 4, Name: "extended L2 entries"},
	{Type: 1, Bit: 0, Name: "lazy refcounts"},
	{Type: 2, Bit: 0, Name: "bitmaps"},
	{Type: 2, Bit: 1, Name: "raw external data"},
}

// featureNameEntrySize is the size of one feature name table entry.
const featureNameEntrySize = 48

// autoclearKnown is the set of autoclear bits qemu 7.2 keeps when it opens an
// image read-write; it clears the others.
const autoclearKnown = AutoclearBitmaps | AutoclearRawData

// WithBacking returns a copy of h whose backing file is name with backing
// format extension format ("" for none). An empty name detaches: the backing
// format extension is dropped too, as qemu does.
func (h *Header) WithBacking(name, format string) *Header {
	c := h.clone()
	c.BackingFile = name
	exts := c.Extensions[:0:0]
	for _, e := range h.Extensions {
		if e.Magic != ExtBackingFormat {
			exts = append(exts, e)
		}
	}
	if name != "" && format != "" {
		// Placement among the extensions does not matter: EncodeCluster0
		// writes them in qemu's fixed order.
		exts = append([]Extension{{Magic: ExtBackingFormat, Data: []byte(format)}}, exts...)
	}
	c.Extensions = exts
	return c
}

func (h *Header) clone() *Header {
	c := *h
	c.UnknownFields = append([]byte(nil), h.UnknownFields...)
	c.Extensions = make([]Extension, len(h.Extensions))
	for i, e := range h.Extensions {
		c.Extensions[i] = Extension{Magic: e.Magic, Data: append([]byte(nil), e.Data...)}
	}
	return &c
}

// EncodeCluster0 builds the whole first cluster of the image from h exactly as
// qemu 7.2's qcow2_update_header does:
//
//   - the header: 72 bytes for version 2; for version 3 the 112-byte header
//     with header_length = 112 + len(UnknownFields), followed by the unknown
//     header fields verbatim;
//   - the extensions in qemu's fixed order: backing format (when h has one), external data file, full disk encryption,
//     the feature name table (version 3 with clusters larger than 4 KiB
//     only), bitmaps (when the bitmaps autoclear bit says they are valid),
//     then every other extension in the reverse of the order
//     h lists them (qemu reads them onto the head of a list);
//   - the end marker, the backing file name right after it, and zeros to the
//     end of the cluster.
//
// Unknown autoclear bits are cleared, as qemu clears them on a read-write
// open. backing_file_offset and backing_file_size are computed; the other
// numeric fields are written as h holds them.
//
// A backing name longer than 1023 bytes is BACKING_NAME_TOO_LONG; a name that
// does not fit in the rest of the cluster is BACKING_NAME_NO_ROOM.
func (h *Header) EncodeCluster0() ([]byte, error) {
	if len(h.BackingFile) > MaxBackingNameLen {
		return nil, errcode.New(errcode.BackingNameTooLong,
			"backing file name is %d bytes, longer than %d", len(h.BackingFile), MaxBackingNameLen)
	}
	if h.ClusterBits < MinClusterBits || h.ClusterBits > MaxClusterBits {
		return nil, badHeader("cluster_bits %d outside %d..%d", h.ClusterBits, MinClusterBits, MaxClusterBits)
	}
	cs := int(h.ClusterSize())
	buf := make([]byte, cs)
	be := binary.BigEndian

	hlen := V2HeaderLength
	if h.Version >= 3 {
		hlen = V3HeaderLength + len(h.UnknownFields)
	}
	if hlen > cs {
		return nil, errcode.New(errcode.BackingNameNoRoom, "no space left in the file header: the header is %d bytes, the cluster %d", hlen, cs)
	}
	be.PutUint32(buf[0:], Magic)
	be.PutUint32(buf[4:], h.Version)
	be.PutUint32(buf[20:], h.ClusterBits)
	be.PutUint64(buf[24:], h.Size)
	be.PutUint32(buf[32:], h.CryptMethod)
	be.PutUint32(buf[36:], h.L1Size)
	be.PutUint64(buf[40:], h.L1TableOffset)
	be.PutUint64(buf[48:], h.RefcountTableOffset)
	be.PutUint32(buf[56:], h.RefcountTableClusters)
	be.PutUint32(buf[60:], h.NbSnapshots)
	be.PutUint64(buf[64:], h.SnapshotsOffset)
	if h.Version >= 3 {
		be.PutUint64(buf[72:], h.IncompatibleFeatures)
		be.PutUint64(buf[80:], h.CompatibleFeatures)
		be.PutUint64(buf[88:], h.AutoclearFeatures&autoclearKnown)
		be.PutUint32(buf[96:], h.RefcountOrder)
		be.PutUint32(buf[100:], uint32(hlen))
		buf[104] = h.CompressionType
		copy(buf[V3HeaderLength:], h.UnknownFields)
	}

	off := hlen
	noRoom := func() error {
		return errcode.New(errcode.BackingNameNoRoom,
			"no space left in the file header for the backing file name (%d bytes, cluster size %d)", len(h.BackingFile), cs)
	}
	put := func(magic uint32, data []byte) error {
		padded := (len(data) + 7) &^ 7
		if off+8+padded > cs {
			return noRoom()
		}
		be.PutUint32(buf[off:], magic)
		be.PutUint32(buf[off+4:], uint32(len(data)))
		copy(buf[off+8:], data)
		off += 8 + padded
		return nil
	}

	if f, ok := h.BackingFormat(); ok {
		if err := put(ExtBackingFormat, []byte(f)); err != nil {
			return nil, err
		}
	}
	for _, magic := range []uint32{ExtDataFile, ExtFDE} {
		if d, ok := h.Extension(magic); ok {
			if err := put(magic, d); err != nil {
				return nil, err
			}
		}
	}
	if h.Version >= 3 && cs > 4096 {
		t := make([]byte, len(featureNameTable)*featureNameEntrySize)
		for i, f := range featureNameTable {
			e := t[i*featureNameEntrySize:]
			e[0], e[1] = f.Type, f.Bit
			copy(e[2:featureNameEntrySize], f.Name)
		}
		if err := put(ExtFeatureNames, t); err != nil {
			return nil, err
		}
	}
	if d, ok := h.Extension(ExtBitmaps); ok && h.AutoclearFeatures&AutoclearBitmaps != 0 {
		if b, _, err := h.Bitmaps(); err == nil && b.NbBitmaps > 0 {
			if err := put(ExtBitmaps, d); err != nil {
				return nil, err
			}
		}
	}
	for i := len(h.Extensions) - 1; i >= 0; i-- {
		e := h.Extensions[i]
		switch e.Magic {
		case ExtBackingFormat, ExtDataFile, ExtFDE, ExtFeatureNames, ExtBitmaps:
			continue
		}
		if err := put(e.Magic, e.Data); err != nil {
			return nil, err
		}
	}
	// End marker.
	if off+8 > cs {
		return nil, noRoom()
	}
	off += 8

	if h.BackingFile != "" {
		if off+len(h.BackingFile) > cs {
			return nil, noRoom()
		}
		be.PutUint64(buf[8:], uint64(off))
		be.PutUint32(buf[16:], uint32(len(h.BackingFile)))
		copy(buf[off:], h.BackingFile)
	}
	return buf, nil
}
