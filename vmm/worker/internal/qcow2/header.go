// Package qcow2 reads the qcow2 on-disk format: the header and its extensions,
// the L1/L2 cluster mapping (standard and extended L2 entries, zero and
// compressed clusters), refcount tables and blocks, and the snapshot table.
//
// Image bytes are untrusted. Every size, offset and loop bound read from the
// file is checked before it is used, and bad input is reported as an
// *errcode.Error (QCOW2_BAD_HEADER, QCOW2_CORRUPT, ...) that names the field at
// fault; nothing here panics or allocates in proportion to a field's value
// beyond the bounds qemu itself enforces.
//
// Open returns an *Image, which implements layer.Image for the worker. The
// lower-level helpers (ReadHeader, L2Table, RefcountBlock, Snapshots) expose
// the raw structures to the checker, rebase and commit.
package qcow2

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"strconv"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/scratch"
)

// Magic is the qcow2 magic number, "QFI\xfb".
const Magic uint32 = 0x514649fb

// Header extension magics.
const (
	ExtEnd           uint32 = 0x00000000
	ExtBackingFormat uint32 = 0xE2792ACA
	ExtFeatureNames  uint32 = 0x6803F857
	ExtBitmaps       uint32 = 0x23852875
	ExtFDE           uint32 = 0x0537BE77
	ExtDataFile      uint32 = 0x44415441
)

// Incompatible feature bits.
const (
	IncompatDirty           uint64 = 1 << 0
	IncompatCorrupt         uint64 = 1 << 1
	IncompatDataFile        uint64 = 1 << 2
	IncompatCompressionType uint64 = 1 << 3
	IncompatExtendedL2      uint64 = 1 << 4

	// IncompatKnown is the set of incompatible bits this package understands.
	IncompatKnown = IncompatDirty | IncompatCorrupt | IncompatDataFile |
		IncompatCompressionType | IncompatExtendedL2
)

// Compatible and autoclear feature bits.
const (
	CompatLazyRefcounts uint64 = 1 << 0

	AutoclearBitmaps uint64 = 1 << 0
	AutoclearRawData uint64 = 1 << 1
)

// Compression types (header byte 104).
const (
	CompressionZlib uint8 = 0
	CompressionZstd uint8 = 1
)

// Limits, mostly the implementation limits of qemu 7.2.
const (
	MinClusterBits = 9
	MaxClusterBits = 21
	// MinExtendedL2ClusterBits is the smallest cluster size with extended L2
	// entries: 32 subclusters of at least 512 bytes.
	MinExtendedL2ClusterBits = 14

	V2HeaderLength    = 72  // the fixed length of a version 2 header
	MinV3HeaderLength = 104 // the smallest header_length of a version 3 header
	V3HeaderLength    = 112 // the header_length qemu writes (sizeof(QCowHeader))

	MaxBackingNameLen   = 1023
	MaxBackingFormatLen = 15 // qemu rejects a backing format extension of 16 bytes or more

	MaxL1Entries          = 32 << 20 / 8 // qemu's QCOW_MAX_L1_SIZE, in entries
	MaxRefcountTableBytes = 8 << 20      // qemu's QCOW_MAX_REFTABLE_SIZE
	MaxSnapshots          = 65536
	MaxBitmaps            = 65535
	MaxBitmapDirectory    = 64 << 20

	// MaxHostOffset bounds every host offset: L1/L2 offsets have 56 bits.
	MaxHostOffset = int64(1) << 56

	// SubclustersPerCluster is the number of subclusters with extended L2.
	SubclustersPerCluster = 32
)

// Header is a decoded qcow2 header with its extensions and backing file name.
//
// The numeric fields are the on-disk values. For version 2 images, which have
// no fields past byte 72, IncompatibleFeatures, CompatibleFeatures and
// AutoclearFeatures are 0, RefcountOrder is 4 and HeaderLength is 72, the
// values the format defines for them.
type Header struct {
	Magic                 uint32
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	IncompatibleFeatures  uint64
	CompatibleFeatures    uint64
	AutoclearFeatures     uint64
	RefcountOrder         uint32
	HeaderLength          uint32
	// CompressionType is byte 104; 0 (zlib) when header_length <= 104.
	CompressionType uint8
	// UnknownFields holds the header bytes from 112 up to HeaderLength
	// verbatim (nil when HeaderLength <= 112). qemu preserves them.
	UnknownFields []byte

	// Extensions are the header extensions in file order, without the end
	// marker.
	Extensions []Extension
	// ExtensionsEnd is the file offset just past the end marker (or past the
	// last extension when the area ends without one).
	ExtensionsEnd int64
	// BackingFile is the backing file name, verbatim ("" when none).
	BackingFile string
}

// Extension is one header extension: its magic and its data without padding.
type Extension struct {
	Magic uint32
	Data  []byte
}

// FeatureName is one entry of the feature name table extension.
type FeatureName struct {
	Type uint8 // 0 incompatible, 1 compatible, 2 autoclear
	Bit  uint8
	Name string
}

// BitmapsExt is the decoded bitmaps extension.
type BitmapsExt struct {
	NbBitmaps       uint32
	Reserved        uint32
	DirectorySize   uint64
	DirectoryOffset uint64
}

// FDEExt is the decoded full disk encryption header pointer.
type FDEExt struct {
	Offset uint64
	Length uint64
}

func badHeader(format string, args ...any) error {
	return errcode.New(errcode.Qcow2BadHeader, "qcow2 header: "+format, args...)
}

// ClusterSize is the cluster size in bytes.
func (h *Header) ClusterSize() int64 { return int64(1) << h.ClusterBits }

// ExtendedL2 reports whether L2 entries are 16-byte extended entries.
func (h *Header) ExtendedL2() bool { return h.IncompatibleFeatures&IncompatExtendedL2 != 0 }

// SubclusterSize is the allocation granularity of guest data: the cluster
// size, or a 32nd of it with extended L2 entries.
func (h *Header) SubclusterSize() int64 {
	if h.ExtendedL2() {
		return h.ClusterSize() / SubclustersPerCluster
	}
	return h.ClusterSize()
}

// L2EntrySize is the size of one L2 entry in bytes (8, or 16 with extended L2).
func (h *Header) L2EntrySize() int {
	if h.ExtendedL2() {
		return 16
	}
	return 8
}

// L2Entries is the number of entries in one L2 table.
func (h *Header) L2Entries() int { return int(h.ClusterSize()) / h.L2EntrySize() }

// RefcountBits is the width of a refcount entry in bits (1 << RefcountOrder).
func (h *Header) RefcountBits() int { return 1 << h.RefcountOrder }

// LazyRefcounts reports the lazy refcounts compatible feature.
func (h *Header) LazyRefcounts() bool { return h.CompatibleFeatures&CompatLazyRefcounts != 0 }

// Dirty reports the dirty incompatible bit.
func (h *Header) Dirty() bool { return h.IncompatibleFeatures&IncompatDirty != 0 }

// Corrupt reports the corrupt incompatible bit.
func (h *Header) Corrupt() bool { return h.IncompatibleFeatures&IncompatCorrupt != 0 }

// VirtualSize is the guest-visible size: Size rounded down to a multiple of
// 512 bytes, as qemu 7.2 computes it (it keeps a sector count).
func (h *Header) VirtualSize() int64 { return int64(h.Size &^ 511) }

// RequiredL1Size is the number of L1 entries needed to map the virtual size.
func (h *Header) RequiredL1Size() uint64 {
	return requiredL1(h.Size, h.ClusterBits, h.L2EntrySize())
}

func requiredL1(size uint64, clusterBits uint32, entrySize int) uint64 {
	// One L1 entry maps (cluster_size / entrySize) clusters.
	shift := 2*clusterBits - uint32(bitsOf(entrySize))
	n := size >> shift
	if size&(uint64(1)<<shift-1) != 0 {
		n++
	}
	return n
}

func bitsOf(n int) int {
	b := 0
	for n > 1 {
		n >>= 1
		b++
	}
	return b
}

// Extension returns the data of the first extension with the given magic.
func (h *Header) Extension(magic uint32) ([]byte, bool) {
	for _, e := range h.Extensions {
		if e.Magic == magic {
			return e.Data, true
		}
	}
	return nil, false
}

// BackingFormat returns the backing format extension's string.
func (h *Header) BackingFormat() (string, bool) {
	d, ok := h.Extension(ExtBackingFormat)
	return string(d), ok
}

// DataFile returns the external data file name extension's string.
func (h *Header) DataFile() (string, bool) {
	d, ok := h.Extension(ExtDataFile)
	return string(d), ok
}

// FeatureNames decodes the feature name table extension (nil when absent).
// Entries are 48 bytes; a trailing partial entry is ignored.
func (h *Header) FeatureNames() []FeatureName {
	d, ok := h.Extension(ExtFeatureNames)
	if !ok {
		return nil
	}
	out := make([]FeatureName, 0, len(d)/48)
	for i := 0; i+48 <= len(d); i += 48 {
		name := d[i+2 : i+48]
		if j := bytes.IndexByte(name, 0); j >= 0 {
			name = name[:j]
		}
		out = append(out, FeatureName{Type: d[i], Bit: d[i+1], Name: string(name)})
	}
	return out
}

// Bitmaps decodes the bitmaps extension. ok is false when it is absent.
func (h *Header) Bitmaps() (b BitmapsExt, ok bool, err error) {
	d, ok := h.Extension(ExtBitmaps)
	if !ok {
		return b, false, nil
	}
	if len(d) != 24 {
		return b, true, badHeader("bitmaps extension has length %d, want 24", len(d))
	}
	b = BitmapsExt{
		NbBitmaps:       be32(d[0:]),
		Reserved:        be32(d[4:]),
		DirectorySize:   be64(d[8:]),
		DirectoryOffset: be64(d[16:]),
	}
	return b, true, nil
}

// FDE decodes the full disk encryption header pointer extension.
func (h *Header) FDE() (f FDEExt, ok bool, err error) {
	d, ok := h.Extension(ExtFDE)
	if !ok {
		return f, false, nil
	}
	if len(d) != 16 {
		return f, true, badHeader("encryption header extension has length %d, want 16", len(d))
	}
	return FDEExt{Offset: be64(d[0:]), Length: be64(d[8:])}, true, nil
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// ReadHeader reads and parses the header cluster of the qcow2 image r whose
// file size is fileSize.
func ReadHeader(r io.ReaderAt, fileSize int64) (*Header, error) {
	return readHeader(r, fileSize, fileSize)
}

// readHeader reads the header cluster and parses it with ParseHeader's
// fileSize parseSize.
func readHeader(r io.ReaderAt, fileSize, parseSize int64) (*Header, error) {
	buf, err := readCluster0(r, fileSize)
	if err != nil {
		return nil, err
	}
	defer scratch.Put(buf) // the Header copies what it keeps
	return ParseHeader(buf, parseSize)
}

// readCluster0 reads the first cluster of the file, or the whole file when it
// is shorter, after checking the magic and the cluster size it declares.
func readCluster0(r io.ReaderAt, fileSize int64) ([]byte, error) {
	if fileSize < V2HeaderLength {
		return nil, badHeader("file is %d bytes, shorter than a qcow2 header", fileSize)
	}
	var fixed [24]byte
	if err := readFull(r, fixed[:], 0); err != nil {
		return nil, err
	}
	if m := be32(fixed[0:]); m != Magic {
		return nil, badHeader("bad magic %#08x", m)
	}
	cb := be32(fixed[20:])
	if cb < MinClusterBits || cb > MaxClusterBits {
		return nil, badHeader("cluster_bits %d outside %d..%d", cb, MinClusterBits, MaxClusterBits)
	}
	buf := scratch.Get(int(min(int64(1)<<cb, fileSize)))
	if err := readFull(r, buf, 0); err != nil {
		return nil, err
	}
	return buf, nil
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return errcode.New(errcode.Qcow2Corrupt, "qcow2: short read of %d bytes at offset %d (got %d)", len(p), off, n)
	}
	return errcode.New(errcode.ReadFailed, "qcow2: read of %d bytes at offset %d: %v", len(p), off, err)
}

// ParseHeader decodes the header cluster. cluster0 holds the first bytes of
// the file: at least the whole first cluster, or the whole file when it is
// shorter (missing bytes read as zero). fileSize is the size of the image file;
// tables that lie beyond it are errors. Pass a negative fileSize to skip the
// checks that need it.
//
// ParseHeader enforces what qemu 7.2 enforces on open, with named errors:
// QCOW2_BAD_HEADER for malformed fields, QCOW2_ENCRYPTED, QCOW2_EXTERNAL_DATA_FILE,
// QCOW2_UNKNOWN_FEATURE, IMAGE_TOO_LARGE and QCOW2_CORRUPT for tables outside
// the file.
func ParseHeader(cluster0 []byte, fileSize int64) (*Header, error) {
	if len(cluster0) < V2HeaderLength {
		return nil, badHeader("header is %d bytes, shorter than %d", len(cluster0), V2HeaderLength)
	}
	h := &Header{
		Magic:                 be32(cluster0[0:]),
		Version:               be32(cluster0[4:]),
		BackingFileOffset:     be64(cluster0[8:]),
		BackingFileSize:       be32(cluster0[16:]),
		ClusterBits:           be32(cluster0[20:]),
		Size:                  be64(cluster0[24:]),
		CryptMethod:           be32(cluster0[32:]),
		L1Size:                be32(cluster0[36:]),
		L1TableOffset:         be64(cluster0[40:]),
		RefcountTableOffset:   be64(cluster0[48:]),
		RefcountTableClusters: be32(cluster0[56:]),
		NbSnapshots:           be32(cluster0[60:]),
		SnapshotsOffset:       be64(cluster0[64:]),
	}
	if h.Magic != Magic {
		return nil, badHeader("bad magic %#08x", h.Magic)
	}
	if h.Version != 2 && h.Version != 3 {
		return nil, badHeader("unsupported version %d", h.Version)
	}
	if h.ClusterBits < MinClusterBits || h.ClusterBits > MaxClusterBits {
		return nil, badHeader("cluster_bits %d outside %d..%d", h.ClusterBits, MinClusterBits, MaxClusterBits)
	}
	cs := h.ClusterSize()
	if int64(len(cluster0)) < cs && (fileSize < 0 || int64(len(cluster0)) < fileSize) {
		return nil, badHeader("header buffer is %d bytes, need the first cluster (%d bytes)", len(cluster0), cs)
	}
	// Work on exactly one cluster, zero-padded when the file is shorter.
	c0 := cluster0
	if int64(len(c0)) > cs {
		c0 = c0[:cs]
	} else if int64(len(c0)) < cs {
		c0 = make([]byte, cs)
		copy(c0, cluster0)
	}

	if h.Version == 2 {
		h.RefcountOrder = 4
		h.HeaderLength = V2HeaderLength
	} else {
		if len(c0) < MinV3HeaderLength {
			return nil, badHeader("version 3 header does not fit in the first cluster")
		}
		h.IncompatibleFeatures = be64(c0[72:])
		h.CompatibleFeatures = be64(c0[80:])
		h.AutoclearFeatures = be64(c0[88:])
		h.RefcountOrder = be32(c0[96:])
		h.HeaderLength = be32(c0[100:])
		if h.HeaderLength < MinV3HeaderLength {
			return nil, badHeader("header_length %d is less than %d", h.HeaderLength, MinV3HeaderLength)
		}
		if int64(h.HeaderLength) > cs {
			return nil, badHeader("header_length %d exceeds the cluster size %d", h.HeaderLength, cs)
		}
		if h.HeaderLength > MinV3HeaderLength {
			h.CompressionType = c0[104]
		}
		if h.HeaderLength > V3HeaderLength {
			h.UnknownFields = bytes.Clone(c0[V3HeaderLength:h.HeaderLength])
		}
	}

	if h.RefcountOrder > 6 {
		return nil, badHeader("refcount_order %d exceeds 6 (64-bit refcounts)", h.RefcountOrder)
	}
	if h.BackingFileOffset > uint64(cs) {
		return nil, badHeader("backing_file_offset %#x is outside the first cluster (%d bytes)", h.BackingFileOffset, cs)
	}

	if err := h.parseExtensions(c0); err != nil {
		return nil, err
	}

	// Features.
	if u := h.IncompatibleFeatures &^ IncompatKnown; u != 0 {
		return nil, errcode.New(errcode.Qcow2UnknownFeature, "qcow2: unsupported incompatible feature(s): %s", h.describeFeatures(0, u))
	}
	if h.IncompatibleFeatures&IncompatDataFile != 0 {
		return nil, errcode.New(errcode.Qcow2ExternalData, "qcow2: image uses an external data file (incompatible feature bit 2)")
	}
	if name, ok := h.DataFile(); ok {
		return nil, errcode.New(errcode.Qcow2ExternalData, "qcow2: image names an external data file %q", name)
	}
	if h.CryptMethod != 0 {
		return nil, errcode.New(errcode.Qcow2Encrypted, "qcow2: image is encrypted (crypt_method %d)", h.CryptMethod)
	}
	if _, ok := h.Extension(ExtFDE); ok {
		return nil, errcode.New(errcode.Qcow2Encrypted, "qcow2: image has a full disk encryption header extension")
	}
	if h.ExtendedL2() && h.ClusterBits < MinExtendedL2ClusterBits {
		return nil, badHeader("extended L2 entries need cluster_bits >= %d, have %d", MinExtendedL2ClusterBits, h.ClusterBits)
	}
	switch h.CompressionType {
	case CompressionZlib:
		if h.IncompatibleFeatures&IncompatCompressionType != 0 {
			return nil, badHeader("compression type bit is set but compression_type is zlib")
		}
	case CompressionZstd:
		if h.IncompatibleFeatures&IncompatCompressionType == 0 {
			return nil, badHeader("compression_type %d without the compression type bit", h.CompressionType)
		}
	default:
		return nil, badHeader("unknown compression_type %d", h.CompressionType)
	}
	if b, ok, err := h.Bitmaps(); err != nil {
		return nil, err
	} else if ok {
		// Like qemu, check the contents only when the autoclear bit says
		// they are consistent.
		if h.AutoclearFeatures&AutoclearBitmaps != 0 {
			if b.Reserved != 0 {
				return nil, badHeader("bitmaps extension reserved field is %#x, want 0", b.Reserved)
			}
			if b.NbBitmaps == 0 || b.NbBitmaps > MaxBitmaps {
				return nil, badHeader("bitmaps extension has %d bitmaps, want 1..%d", b.NbBitmaps, MaxBitmaps)
			}
			if b.DirectoryOffset&uint64(cs-1) != 0 || b.DirectoryOffset >= uint64(MaxHostOffset) {
				return nil, badHeader("bitmap directory offset %#x is not a valid cluster offset", b.DirectoryOffset)
			}
			if b.DirectorySize > MaxBitmapDirectory {
				return nil, badHeader("bitmap directory size %d exceeds %d", b.DirectorySize, MaxBitmapDirectory)
			}
		}
	}

	// Backing file name.
	if h.BackingFileOffset != 0 {
		n := uint64(h.BackingFileSize)
		if n > MaxBackingNameLen {
			return nil, badHeader("backing file name is %d bytes, longer than %d", n, MaxBackingNameLen)
		}
		if n > uint64(cs)-h.BackingFileOffset {
			return nil, badHeader("backing file name (%d bytes at %#x) extends past the first cluster", n, h.BackingFileOffset)
		}
		h.BackingFile = string(c0[h.BackingFileOffset : h.BackingFileOffset+n])
	}

	// Sizes and tables.
	if h.Size > math.MaxInt64 {
		return nil, errcode.New(errcode.ImageTooLarge, "qcow2: virtual size %d is too large", h.Size)
	}
	need := h.RequiredL1Size()
	if need > MaxL1Entries {
		return nil, errcode.New(errcode.ImageTooLarge, "qcow2: virtual size %d needs %d L1 entries, more than %d", h.Size, need, MaxL1Entries)
	}
	if h.L1Size > MaxL1Entries {
		return nil, badHeader("l1_size %d exceeds %d entries", h.L1Size, MaxL1Entries)
	}
	if uint64(h.L1Size) < need {
		return nil, badHeader("l1_size %d is too small for virtual size %d (need %d)", h.L1Size, h.Size, need)
	}
	if err := h.checkTable("L1 table", h.L1TableOffset, uint64(h.L1Size)*8, fileSize); err != nil {
		return nil, err
	}
	rtBytes := uint64(h.RefcountTableClusters) << h.ClusterBits
	if rtBytes > MaxRefcountTableBytes {
		return nil, badHeader("refcount table is %d bytes, more than %d", rtBytes, MaxRefcountTableBytes)
	}
	if h.RefcountTableClusters == 0 {
		return nil, badHeader("refcount_table_clusters is 0")
	}
	if err := h.checkTable("refcount table", h.RefcountTableOffset, rtBytes, fileSize); err != nil {
		return nil, err
	}
	if h.NbSnapshots > MaxSnapshots {
		return nil, badHeader("nb_snapshots %d exceeds %d", h.NbSnapshots, MaxSnapshots)
	}
	if err := h.checkTable("snapshot table", h.SnapshotsOffset, uint64(h.NbSnapshots)*snapshotFixedSize, fileSize); err != nil {
		return nil, err
	}
	return h, nil
}

// checkTable validates a table at off of n bytes: cluster aligned, no overflow,
// inside the file. An empty table may have any aligned offset.
func (h *Header) checkTable(what string, off, n uint64, fileSize int64) error {
	if off&uint64(h.ClusterSize()-1) != 0 {
		return badHeader("%s offset %#x is not cluster aligned", what, off)
	}
	if off > math.MaxInt64-n {
		// qemu's bound, which it applies to an empty table too.
		return badHeader("%s offset %#x is invalid", what, off)
	}
	if n == 0 {
		return nil
	}
	if off == 0 {
		return badHeader("%s is at offset 0 (the header)", what)
	}
	if off >= uint64(MaxHostOffset) || n > uint64(MaxHostOffset)-off {
		return badHeader("%s at %#x (%d bytes) is beyond the maximum host offset", what, off, n)
	}
	if fileSize >= 0 && off+n > uint64(fileSize) {
		return errcode.New(errcode.Qcow2Corrupt, "qcow2: %s at %#x (%d bytes) extends past the end of the file (%d bytes)", what, off, n, fileSize)
	}
	return nil
}

// parseExtensions reads the extension area from the end of the header to
// backing_file_offset, or to the end of cluster 0 when there is no backing
// file.
func (h *Header) parseExtensions(c0 []byte) error {
	start := uint64(h.HeaderLength)
	end := uint64(len(c0))
	if h.BackingFileOffset != 0 {
		end = h.BackingFileOffset
	}
	off := start
	h.ExtensionsEnd = int64(start)
	for off < end {
		if end-off < 8 {
			return badHeader("header extension at %#x: header does not fit before %#x", off, end)
		}
		magic := be32(c0[off:])
		n := uint64(be32(c0[off+4:]))
		off += 8
		if n > end-off {
			return badHeader("header extension %#08x at %#x: length %d overflows the extension area (ends at %#x)", magic, off-8, n, end)
		}
		if magic == ExtEnd {
			h.ExtensionsEnd = int64(off)
			return nil
		}
		data := bytes.Clone(c0[off : off+n])
		switch magic {
		case ExtBackingFormat:
			if n > MaxBackingFormatLen {
				return badHeader("backing format extension is %d bytes, longer than %d", n, MaxBackingFormatLen)
			}
		}
		h.Extensions = append(h.Extensions, Extension{Magic: magic, Data: data})
		off += (n + 7) &^ 7
		h.ExtensionsEnd = int64(min(off, end))
	}
	return nil
}

// describeFeatures names the bits of mask of the given feature type using the
// feature name table, falling back to "bit N".
func (h *Header) describeFeatures(typ uint8, mask uint64) string {
	names := h.FeatureNames()
	var b bytes.Buffer
	for bit := 0; bit < 64; bit++ {
		if mask&(uint64(1)<<bit) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		name := ""
		for _, f := range names {
			if f.Type == typ && int(f.Bit) == bit {
				name = f.Name
				break
			}
		}
		if name != "" {
			b.WriteString(quoteName(name))
			b.WriteString(" (bit " + strconv.Itoa(bit) + ")")
		} else {
			b.WriteString("bit " + strconv.Itoa(bit))
		}
	}
	return b.String()
}

func quoteName(s string) string {
	// Names come from the image: keep them printable.
	out := make([]byte, 0, len(s)+2)
	out = append(out, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			c = '?'
		}
		out = append(out, c)
	}
	return string(append(out, '"'))
}
