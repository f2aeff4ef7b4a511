// Package vmdk reads VMware vmdk images of the hosted sparse kinds qemu creates:
// monolithicSparse and streamOptimized, one sparse extent with its descriptor
// embedded in the same file.
//
// A vmdk whose descriptor names other extent files (a plain-text descriptor,
// monolithicFlat, twoGbMaxExtent*, vmfs*) is refused with VMDK_EXTERNAL_EXTENT:
// extent file names are never used to open anything.
//
// Layout of a sparse extent (offsets in 512-byte sectors):
//
//	sector 0            SparseExtentHeader ("KDMV", little-endian)
//	DescriptorOffset    the embedded descriptor text, NUL padded
//	RGDOffset           redundant grain directory (with FlagRedundantGD)
//	GDOffset            grain directory: u32 sector of each grain table
//	...                 grain tables: u32 sector of each grain
//	                    (0 unallocated, 1 zeroed with FlagZeroedGrain)
//	OverHead            first grain
//
// A compressed (streamOptimized) grain starts with a marker {u64 lba, u32 size}
// followed by size bytes of zlib data. When GDOffset is GDAtEnd, the header that
// counts is the footer, two sectors before the end-of-stream marker.
//
// Image implements layer.Image and follows qemu 7.2's reading rules (block/vmdk.c)
// where they are safe, and refuses with a named error where hostile bytes would
// make them unsafe.
package vmdk

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
)

// Image is an opened monolithicSparse or streamOptimized vmdk. It is safe for
// concurrent use.
type Image struct {
	r        io.ReaderAt
	fileSize int64

	raw     [SectorSize]byte // sector 0, as read
	primary Header           // the header in sector 0
	h       Header           // the header in force: the footer's when GDOffset is GDAtEnd
	footer  int64            // byte offset of the footer header sector, or -1

	desc       *Descriptor
	descOffset int64 // bytes
	descArea   int64 // bytes
	cid        uint32
	parentCID  uint32
	parentName string
	hasParent  bool

	vsize      int64
	grainBytes int64
	perGT      uint64 // grain table entries per table
	gd, rgd    []uint32

	mu     sync.Mutex
	tick   uint64
	gts    [gtCacheSize]cachedGT
	lastGT int // index in gts of the table used last
	grains [grainCacheSize]cachedGrain
}

const (
	gtCacheSize    = 64
	grainCacheSize = 4
	// maxScanGrains bounds the grains one Extent call looks at when merging.
	maxScanGrains = 1 << 16
)

type cachedGT struct {
	sector uint32
	used   uint64
	gt     []uint32
	// uniform: every grain of the table reads the same way (unallocated,
	// zeroed, or compressed), so a run that reaches the table covers all of
	// it. Grain directories whose entries all name one such table would
	// otherwise cost a lookup per grain of the virtual size.
	uniform bool
}

type cachedGrain struct {
	index uint64
	used  uint64
	data  []byte // nil: empty slot
}

var _ layer.Image = (*Image)(nil)

// External createType values: these describe extents in other files.
var externalTypes = map[string]bool{
	"monolithicFlat": true, "twoGbMaxExtentSparse": true, "twoGbMaxExtentFlat": true,
	"vmfs": true, "vmfsSparse": true, "vmfsThin": true, "vmfsPreallocated": true,
	"vmfsEagerZeroedThick": true, "vmfsRaw": true, "vmfsRawDeviceMap": true,
	"vmfsPassthroughRawDeviceMap": true, "fullDevice": true, "partitionedDevice": true,
	"seSparse": true, "custom": true,
}

// Open reads the header, the descriptor and the grain directory of a vmdk of
// fileSize bytes. Grain tables are read on demand.
func Open(r io.ReaderAt, fileSize int64) (*Image, error) {
	if fileSize < 0 {
		return nil, errcode.New(errcode.BadArguments, "negative file size %d", fileSize)
	}
	head := make([]byte, min(fileSize, ProbeBytes))
	if err := readFull(r, head, 0); err != nil {
		return nil, err
	}
	switch Detect(head) {
	case SparseExtent:
	case DescriptorFile:
		return nil, refuseDescriptorFile(r, fileSize)
	case COWDExtent:
		return nil, errcode.New(errcode.VmdkUnsupported, "vmfsSparse (COWD) vmdk extents are not supported")
	default:
		return nil, errcode.New(errcode.VmdkBadHeader, "not a vmdk image: no KDMV magic and no descriptor")
	}
	if fileSize < SectorSize {
		return nil, errcode.New(errcode.VmdkBadHeader, "vmdk file of %d bytes is too small for a header", fileSize)
	}
	img := &Image{r: r, fileSize: fileSize, footer: -1}
	copy(img.raw[:], head)
	var err error
	if img.primary, err = ParseHeader(img.raw[:]); err != nil {
		return nil, err
	}
	if img.primary.Capacity == 0 && img.primary.DescriptorOffset != 0 {
		// qemu reads such an embedded descriptor as a descriptor file.
		return nil, errcode.New(errcode.VmdkExternalExtent, "vmdk header of capacity 0 defers to its descriptor's extent files")
	}
	img.h = img.primary
	if img.primary.GDOffset == GDAtEnd {
		if err := img.readFooter(); err != nil {
			return nil, err
		}
	}
	if err := img.h.validate(fileSize); err != nil {
		return nil, err
	}
	img.vsize = int64(img.h.Capacity) * SectorSize
	img.grainBytes = int64(img.h.GrainSize) * SectorSize
	img.perGT = uint64(img.h.NumGTEsPerGT)
	if err := img.readDescriptor(); err != nil {
		return nil, err
	}
	if img.gd, err = img.readDirectory(img.h.GDOffset, "grain directory"); err != nil {
		return nil, err
	}
	if img.h.HasRGD() {
		if img.rgd, err = img.readDirectory(img.h.RGDOffset, "redundant grain directory"); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// refuseDescriptorFile builds the error for a plain-text descriptor, naming the
// first extent file when the text says one.
func refuseDescriptorFile(r io.ReaderAt, fileSize int64) error {
	buf := make([]byte, min(fileSize, MaxDescriptorSize))
	if err := readFull(r, buf, 0); err != nil {
		return err
	}
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	if d, err := ParseDescriptor(buf); err == nil {
		if es := d.Extents(); len(es) > 0 {
			return errcode.New(errcode.VmdkExternalExtent,
				"vmdk descriptor file names extent file %q: only monolithicSparse and streamOptimized images are supported", clip(es[0].Filename))
		}
	}
	return errcode.New(errcode.VmdkExternalExtent,
		"vmdk descriptor file with its extents in other files: only monolithicSparse and streamOptimized images are supported")
}

// readFooter replaces the header in force by the footer: qemu reads three
// sectors ending at the end of the file (rounded up to a sector) - a footer
// marker, the footer header and the end-of-stream marker.
func (img *Image) readFooter() error {
	end := (img.fileSize + SectorSize - 1) / SectorSize * SectorSize
	at := end - 3*SectorSize
	if at < SectorSize {
		return errcode.New(errcode.VmdkBadHeader, "vmdk header says the grain directory is at the end, but the file has no room for a footer")
	}
	buf := make([]byte, 3*SectorSize)
	n := min(int64(len(buf)), img.fileSize-at) // past the end reads as zeros, as in qemu
	if err := readFull(img.r, buf[:n], at); err != nil {
		return err
	}
	le := binary.LittleEndian
	marker, foot, eos := buf[:SectorSize], buf[SectorSize:2*SectorSize], buf[2*SectorSize:]
	if string(foot[:4]) != MagicSparse ||
		le.Uint32(marker[8:]) != 0 || le.Uint32(marker[12:]) != MarkerFooter ||
		le.Uint64(eos) != 0 || le.Uint32(eos[8:]) != 0 || le.Uint32(eos[12:]) != MarkerEOS {
		return errcode.New(errcode.VmdkBadHeader, "invalid vmdk footer")
	}
	h, err := ParseHeader(foot)
	if err != nil {
		return err
	}
	if h.GDOffset == GDAtEnd {
		return errcode.New(errcode.VmdkBadHeader, "vmdk footer does not locate the grain directory")
	}
	img.h = h
	img.footer = at + SectorSize
	return nil
}

// readDescriptor reads and checks the embedded descriptor. qemu always reads it
// at sector 1 (10 KiB, cut at the first NUL) whatever the header says, so
// instarfs accepts it only there and only when it ends within that window.
func (img *Image) readDescriptor() error {
	p := img.primary
	switch {
	case p.DescriptorOffset == 0 || p.DescriptorSize == 0:
		return errcode.New(errcode.VmdkBadDescriptor, "vmdk has no embedded descriptor")
	case p.DescriptorOffset != 1:
		return errcode.New(errcode.VmdkUnsupported, "vmdk embedded descriptor at sector %d (qemu reads it at sector 1)", p.DescriptorOffset)
	case p.DescriptorSize > uint64(img.fileSize/SectorSize-1):
		return errcode.New(errcode.VmdkBadHeader, "vmdk descriptor of %d sectors extends past the end of the file", p.DescriptorSize)
	}
	img.descOffset = SectorSize
	img.descArea = int64(p.DescriptorSize) * SectorSize
	buf := make([]byte, min(img.descArea, qemuDescWindow))
	if err := readFull(img.r, buf, img.descOffset); err != nil {
		return err
	}
	nul := bytes.IndexByte(buf, 0)
	if nul < 0 {
		return errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor is not terminated within %d bytes", len(buf))
	}
	d, err := ParseDescriptor(buf[:nul])
	if err != nil {
		return err
	}
	img.desc = d
	if img.cid, err = d.CID(); err != nil {
		return err
	}
	if img.parentCID, err = d.ParentCID(); err != nil {
		return err
	}
	if img.parentName, img.hasParent, err = d.ParentFileNameHint(); err != nil {
		return err
	}
	if ct, ok := d.CreateType(); ok && ct != "monolithicSparse" && ct != "streamOptimized" {
		if externalTypes[ct] {
			return errcode.New(errcode.VmdkExternalExtent, "vmdk createType %q keeps its extents in other files", clip(ct))
		}
		return errcode.New(errcode.VmdkUnsupported, "unsupported vmdk createType %q", clip(ct))
	}
	es := d.Extents()
	if len(es) > 1 {
		return errcode.New(errcode.VmdkExternalExtent, "vmdk descriptor names %d extents; only one embedded sparse extent is supported", len(es))
	}
	if len(es) == 1 && es[0].Type != "SPARSE" {
		if es[0].Type == "ZERO" {
			return errcode.New(errcode.VmdkUnsupported, "vmdk ZERO extents are not supported")
		}
		return errcode.New(errcode.VmdkExternalExtent, "vmdk descriptor names a %s extent in file %q", clip(es[0].Type), clip(es[0].Filename))
	}
	return nil
}

// readDirectory reads a grain directory at sector off, which must lie in the
// file after the header and the descriptor.
func (img *Image) readDirectory(off uint64, what string) ([]uint32, error) {
	n, _ := img.h.gdEntries() // validated
	size := n * 4
	if off == 0 {
		return nil, errcode.New(errcode.VmdkBadHeader, "vmdk %s at sector 0 overlaps the header", what)
	}
	if off > uint64(img.fileSize/SectorSize) || off*SectorSize+size > uint64(img.fileSize) {
		return nil, errcode.New(errcode.VmdkBadHeader, "vmdk %s at sector %d (%d bytes) lies outside the file", what, off, size)
	}
	start := int64(off) * SectorSize
	if start < img.descOffset+img.descArea && start+int64(size) > img.descOffset {
		return nil, errcode.New(errcode.VmdkBadHeader, "vmdk %s at sector %d overlaps the descriptor", what, off)
	}
	buf := make([]byte, size)
	if err := readFull(img.r, buf, start); err != nil {
		return nil, err
	}
	dir := make([]uint32, n)
	for i := range dir {
		dir[i] = binary.LittleEndian.Uint32(buf[4*i:])
	}
	return dir, nil
}

// readFull reads len(b) bytes at off; a short read is a truncated file.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return errcode.New(errcode.VmdkCorrupt, "vmdk file is truncated: reading %d bytes at offset %d", len(b), off)
	}
	return errcode.New(errcode.ReadFailed, "reading vmdk at offset %d: %v", off, err)
}

// VirtualSize is the guest disk size in bytes.
func (img *Image) VirtualSize() int64 { return img.vsize }

// FileSize is the size of the image file Open was given.
func (img *Image) FileSize() int64 { return img.fileSize }

// Header returns the header in force: the footer's when the file has one.
func (img *Image) Header() Header { return img.h }

// PrimaryHeader returns the header in sector 0.
func (img *Image) PrimaryHeader() Header { return img.primary }

// HeaderSector returns a copy of sector 0 as read.
func (img *Image) HeaderSector() []byte { return bytes.Clone(img.raw[:]) }

// FooterOffset is the byte offset of the footer's header sector, or -1 when the
// header in sector 0 is in force.
func (img *Image) FooterOffset() int64 { return img.footer }

// CID is the content ID, as qemu-img info reports it (decimal there).
func (img *Image) CID() uint32 { return img.cid }

// ParentCID is the parent's content ID; 0xffffffff when there is no parent.
func (img *Image) ParentCID() uint32 { return img.parentCID }

// CreateType is the create type qemu reports: streamOptimized for a compressed
// extent, monolithicSparse otherwise (qemu does not read createType from an
// embedded descriptor; Descriptor().CreateType() has the text's value).
func (img *Image) CreateType() string {
	if img.h.Compressed() {
		return "streamOptimized"
	}
	return "monolithicSparse"
}

// ParentFileNameHint returns the backing file name and whether the descriptor
// has a parentFileNameHint line. qemu takes the name as the backing file (an
// empty name means none) and the backing format is always vmdk.
func (img *Image) ParentFileNameHint() (string, bool) { return img.parentName, img.hasParent }

// Descriptor returns a copy of the parsed embedded descriptor.
func (img *Image) Descriptor() *Descriptor { return img.desc.Clone() }

// DescriptorText returns the embedded descriptor text, without NUL padding.
func (img *Image) DescriptorText() string { return img.desc.String() }

// DescriptorOffset is the byte offset of the embedded descriptor (always 512).
func (img *Image) DescriptorOffset() int64 { return img.descOffset }

// DescriptorAreaSize is the size in bytes of the area reserved for the
// embedded descriptor (DescriptorSize sectors).
func (img *Image) DescriptorAreaSize() int64 { return img.descArea }

// GrainSize is the grain size in bytes (qemu's cluster-size).
func (img *Image) GrainSize() int64 { return img.grainBytes }

// Capacity is the virtual size in sectors.
func (img *Image) Capacity() uint64 { return img.h.Capacity }

// Compressed reports whether grains are compressed (streamOptimized).
func (img *Image) Compressed() bool { return img.h.Compressed() }

// ZeroedGrains reports whether a grain table entry of 1 means a zeroed grain.
func (img *Image) ZeroedGrains() bool { return img.h.ZeroedGrains() }

// NumGTEsPerGT is the number of entries in each grain table.
func (img *Image) NumGTEsPerGT() int { return int(img.perGT) }

// GDOffset is the byte offset of the grain directory qemu reads.
func (img *Image) GDOffset() int64 { return int64(img.h.GDOffset) * SectorSize }

// RGDOffset is the byte offset of the redundant grain directory, or 0 when
// there is none to keep in step.
func (img *Image) RGDOffset() int64 {
	if img.rgd == nil {
		return 0
	}
	return int64(img.h.RGDOffset) * SectorSize
}

// GD returns a copy of the grain directory: the sector of each grain table, 0
// for none.
func (img *Image) GD() []uint32 { return append([]uint32(nil), img.gd...) }

// RGD returns a copy of the redundant grain directory, nil when there is none.
func (img *Image) RGD() []uint32 {
	if img.rgd == nil {
		return nil
	}
	return append([]uint32(nil), img.rgd...)
}

// GrainTable returns a copy of the grain table of directory entry i, nil when
// the entry is 0.
func (img *Image) GrainTable(i int) ([]uint32, error) {
	if i < 0 || i >= len(img.gd) {
		return nil, errcode.New(errcode.Internal, "grain directory index %d out of range", i)
	}
	if img.gd[i] == 0 {
		return nil, nil
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	gt, err := img.loadGT(img.gd[i])
	if err != nil {
		return nil, err
	}
	return append([]uint32(nil), gt...), nil
}

// loadGT returns the grain table at sector, from the cache or the file. The
// caller holds img.mu; the returned slice is valid until it releases it.
func (img *Image) loadGT(sector uint32) ([]uint32, error) {
	if c := &img.gts[img.lastGT]; c.gt != nil && c.sector == sector {
		return c.gt, nil
	}
	img.tick++
	victim := 0
	for i := range img.gts {
		c := &img.gts[i]
		if c.gt != nil && c.sector == sector {
			c.used = img.tick
			img.lastGT = i
			return c.gt, nil
		}
		if c.used < img.gts[victim].used {
			victim = i
		}
	}
	size := int64(img.perGT) * 4
	off := int64(sector) * SectorSize
	if off+size > img.fileSize {
		return nil, errcode.New(errcode.VmdkCorrupt, "vmdk grain table at sector %d lies past the end of the file", sector)
	}
	buf := make([]byte, size)
	if err := readFull(img.r, buf, off); err != nil {
		return nil, err
	}
	gt := make([]uint32, img.perGT)
	for i := range gt {
		gt[i] = binary.LittleEndian.Uint32(buf[4*i:])
	}
	img.gts[victim] = cachedGT{sector: sector, used: img.tick, gt: gt, uniform: img.uniform(gt)}
	img.lastGT = victim
	return gt, nil
}

// uniform reports whether every entry of gt reads the same way with no host
// offset to keep contiguous: all unallocated, all zeroed, or all compressed.
func (img *Image) uniform(gt []uint32) bool {
	class := func(v uint32) int {
		switch {
		case v == 0:
			return 0
		case v == 1 && img.h.ZeroedGrains():
			return 1
		case img.h.Compressed():
			return 2
		}
		return -1 // data grains merge only when contiguous
	}
	c := class(gt[0])
	if c < 0 {
		return false
	}
	for _, v := range gt[1:] {
		if class(v) != c {
			return false
		}
	}
	return true
}

// uniformGT reports whether the grain table at sector, the one used last, is
// uniform. The caller holds img.mu.
func (img *Image) uniformGT(sector uint32) bool {
	c := &img.gts[img.lastGT]
	return c.gt != nil && c.sector == sector && c.uniform
}

// grain is what one grain table entry says.
type grain struct {
	kind       layer.Kind
	compressed bool
	host       int64 // byte offset of the grain (or its marker), -1 for none
}

// lookup returns grain g's entry. The caller holds img.mu.
func (img *Image) lookup(g uint64) (grain, error) {
	gdi := g / img.perGT
	if gdi >= uint64(len(img.gd)) {
		return grain{}, errcode.New(errcode.Internal, "grain %d out of range", g)
	}
	if img.gd[gdi] == 0 {
		return grain{kind: layer.Unallocated, host: -1}, nil
	}
	gt, err := img.loadGT(img.gd[gdi])
	if err != nil {
		return grain{}, err
	}
	return img.classify(g, gt[g%img.perGT])
}

func (img *Image) classify(g uint64, gte uint32) (grain, error) {
	switch {
	case gte == 0:
		return grain{kind: layer.Unallocated, host: -1}, nil
	case gte == 1 && img.h.ZeroedGrains():
		return grain{kind: layer.Zero, host: -1}, nil
	case img.h.Compressed():
		return grain{kind: layer.Data, compressed: true, host: int64(gte) * SectorSize}, nil
	}
	host := int64(gte) * SectorSize
	used := min(img.grainBytes, img.vsize-int64(g)*img.grainBytes)
	if host+used > img.fileSize {
		return grain{}, errcode.New(errcode.VmdkCorrupt, "vmdk grain at sector %d lies past the end of the file", gte)
	}
	return grain{kind: layer.Data, host: host}, nil
}

// Extent returns the run of guest bytes starting at off that this image defines
// in one way: whole grains, merged with following grains of the same kind
// (data grains only when contiguous in the file; compressed grains always).
func (img *Image) Extent(off int64) (layer.Extent, error) {
	if off < 0 || off >= img.vsize {
		return layer.Extent{}, errcode.New(errcode.Internal, "vmdk extent offset %d outside the disk (%d bytes)", off, img.vsize)
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.extent(off, img.vsize)
}

// extent is Extent that stops merging at limit. The caller holds img.mu.
func (img *Image) extent(off, limit int64) (layer.Extent, error) {
	g := uint64(off / img.grainBytes)
	first, err := img.lookup(g)
	if err != nil {
		return layer.Extent{}, err
	}
	e := layer.Extent{Start: off, Kind: first.kind, HostOffset: -1, Compressed: first.compressed}
	gstart := int64(g) * img.grainBytes
	if first.host >= 0 && !first.compressed {
		e.HostOffset = first.host + off - gstart
	}
	end := img.next(g, first)
	prev := first
	for scanned := 0; end < limit && scanned < maxScanGrains; scanned++ {
		g = uint64(end / img.grainBytes)
		cur, err := img.lookup(g)
		if err != nil || cur.kind != prev.kind || cur.compressed != prev.compressed ||
			(cur.kind == layer.Data && !cur.compressed && cur.host != prev.host+img.grainBytes) {
			break
		}
		end = img.next(g, cur)
		prev = cur
	}
	e.Length = min(end, img.vsize) - off
	return e, nil
}

// next returns the guest offset after grain g, or after its whole grain table
// when the grain directory entry is empty or the table is uniform. g must be
// the grain looked up last.
func (img *Image) next(g uint64, gr grain) int64 {
	n := g + 1
	if s := img.gd[g/img.perGT]; gr.kind == layer.Unallocated && s == 0 || s != 0 && img.uniformGT(s) {
		n = (g/img.perGT + 1) * img.perGT
	}
	if n > uint64(img.vsize/img.grainBytes)+1 {
		return img.vsize
	}
	return min(int64(n)*img.grainBytes, img.vsize)
}

// ReadAt reads guest bytes as this image alone defines them: unallocated and
// zeroed grains read as zeros.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errcode.New(errcode.Internal, "negative read offset %d", off)
	}
	if off >= img.vsize {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), img.vsize-off))
	done := 0
	for done < n {
		pos := off + int64(done)
		img.mu.Lock()
		e, err := img.extent(pos, off+int64(n))
		img.mu.Unlock()
		if err != nil {
			return done, err
		}
		chunk := int(min(e.End(), off+int64(n)) - pos)
		dst := p[done : done+chunk]
		switch {
		case e.Kind != layer.Data:
			clear(dst)
		case e.Compressed:
			if err := img.readCompressed(dst, pos); err != nil {
				return done, err
			}
		default:
			if err := readFull(img.r, dst, e.HostOffset); err != nil {
				return done, err
			}
		}
		done += chunk
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readCompressed fills dst with guest bytes at off, which lie in compressed grains.
func (img *Image) readCompressed(dst []byte, off int64) error {
	for len(dst) > 0 {
		g := uint64(off / img.grainBytes)
		in := off - int64(g)*img.grainBytes
		data, err := img.grainData(g)
		if err != nil {
			return err
		}
		want := min(int64(len(dst)), img.grainBytes-in)
		if in+want > int64(len(data)) {
			return errcode.New(errcode.VmdkCorrupt, "vmdk compressed grain %d holds %d bytes, short of %d", g, len(data), in+want)
		}
		copy(dst, data[in:in+want])
		dst = dst[want:]
		off += want
	}
	return nil
}

// grainData returns compressed grain g decompressed, from the cache or the file.
func (img *Image) grainData(g uint64) ([]byte, error) {
	img.mu.Lock()
	img.tick++
	victim := 0
	for i := range img.grains {
		c := &img.grains[i]
		if c.data != nil && c.index == g {
			c.used = img.tick
			data := c.data
			img.mu.Unlock()
			return data, nil
		}
		if c.used < img.grains[victim].used {
			victim = i
		}
	}
	gr, err := img.lookup(g)
	img.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if gr.kind != layer.Data || !gr.compressed {
		return nil, errcode.New(errcode.Internal, "vmdk grain %d is not compressed", g)
	}
	data, err := img.inflate(g, gr.host)
	if err != nil {
		return nil, err
	}
	img.mu.Lock()
	img.grains[victim] = cachedGrain{index: g, used: img.tick, data: data}
	img.mu.Unlock()
	return data, nil
}

// inflate decompresses the grain whose marker (or data, without markers) is at
// byte host. Like qemu's vmdk_read_extent: the marker's size must be non-zero
// and fit in two grains, the zlib stream must end (checksum included) and must
// not decompress to more than a grain.
func (img *Image) inflate(g uint64, host int64) ([]byte, error) {
	corrupt := func(why string) error {
		return errcode.New(errcode.VmdkCorrupt, "vmdk compressed grain %d at offset %d: %s", g, host, why)
	}
	dataOff, dataLen := host, img.grainBytes
	if img.h.HasMarkers() {
		var m [12]byte
		if host+int64(len(m)) > img.fileSize {
			return nil, corrupt("marker past the end of the file")
		}
		if err := readFull(img.r, m[:], host); err != nil {
			return nil, err
		}
		dataOff = host + int64(len(m))
		dataLen = int64(binary.LittleEndian.Uint32(m[8:]))
		if dataLen == 0 || dataLen > 2*img.grainBytes-int64(len(m)) {
			return nil, corrupt("invalid compressed size")
		}
		if dataOff+dataLen > img.fileSize {
			return nil, corrupt("data past the end of the file")
		}
	} else {
		if dataOff >= img.fileSize {
			return nil, corrupt("data past the end of the file")
		}
		dataLen = min(dataLen, img.fileSize-dataOff)
	}
	zr, err := zlib.NewReader(io.NewSectionReader(img.r, dataOff, dataLen))
	if err != nil {
		return nil, inflateError(corrupt, err)
	}
	// Read one byte more than a grain: qemu fails when the data does not fit.
	// The buffer grows with the output, not with the grain size.
	data, err := io.ReadAll(io.LimitReader(zr, img.grainBytes+1))
	if err != nil {
		return nil, inflateError(corrupt, err)
	}
	if int64(len(data)) > img.grainBytes {
		return nil, corrupt("decompresses to more than a grain")
	}
	return data, nil
}

// inflateError names a decompression failure: bad zlib data is a corrupt grain,
// anything else came from reading the file.
func inflateError(corrupt func(string) error, err error) error {
	var ce flate.CorruptInputError
	switch {
	case errors.As(err, &ce), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, zlib.ErrChecksum), errors.Is(err, zlib.ErrHeader), errors.Is(err, zlib.ErrDictionary):
		return corrupt(err.Error())
	}
	return errcode.New(errcode.ReadFailed, "reading vmdk compressed grain: %v", err)
}
