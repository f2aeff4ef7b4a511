package qcow2

import (
	"container/list"
	"encoding/binary"
	"io"
	"sync"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/scratch"
)

// l2CacheBytes bounds the memory held by an Image's L2 table cache.
const l2CacheBytes = 16 << 20

// l2CacheMaxTables bounds the number of cached L2 tables (small clusters).
const l2CacheMaxTables = 4096

// Image is an open qcow2 image. It implements layer.Image: ReadAt and Extent
// describe the image alone, without its backing file. An Image is safe for
// concurrent use.
type Image struct {
	r        io.ReaderAt
	fileSize int64
	h        *Header
	l1       []uint64

	mu      sync.Mutex
	l2      l2Cache
	zcache  compressedCache
	decoder decompressor
}

var _ layer.Image = (*Image)(nil)

// Open reads the header and the active L1 table of the qcow2 image r, whose
// file is fileSize bytes long.
func Open(r io.ReaderAt, fileSize int64) (*Image, error) {
	h, err := ReadHeader(r, fileSize)
	if err != nil {
		return nil, err
	}
	l1, err := readTable(r, int64(h.L1TableOffset), int(h.L1Size))
	if err != nil {
		return nil, err
	}
	img := &Image{r: r, fileSize: fileSize, h: h, l1: l1}
	img.l2.init(min(max(4, l2CacheBytes>>h.ClusterBits), l2CacheMaxTables))
	return img, nil
}

// readTable reads n big-endian 64-bit entries at off in one read. The caller
// has bounded n and checked the table against the file size.
func readTable(r io.ReaderAt, off int64, n int) ([]uint64, error) {
	buf := scratch.Get(8 * n)
	defer scratch.Put(buf)
	if err := readFull(r, buf, off); err != nil {
		return nil, err
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[8*i:])
	}
	return t, nil
}

// Header returns the image's header. It must not be modified.
func (img *Image) Header() *Header { return img.h }

// L1 returns the active L1 table (l1_size entries, raw). It must not be
// modified.
func (img *Image) L1() []uint64 { return img.l1 }

// VirtualSize is the guest-visible size in bytes: the header's size rounded
// down to a multiple of 512, as qemu sees it.
func (img *Image) VirtualSize() int64 { return img.h.VirtualSize() }

// FileSize is the size of the image file the Image was opened with.
func (img *Image) FileSize() int64 { return img.fileSize }

// ClusterSize is the cluster size in bytes.
func (img *Image) ClusterSize() int64 { return img.h.ClusterSize() }

// SubclusterSize is the allocation granularity of guest data.
func (img *Image) SubclusterSize() int64 { return img.h.SubclusterSize() }

// ReadL2Table reads the L2 table at host offset off (through the cache).
// off must be cluster aligned and the table inside the file.
func (img *Image) ReadL2Table(off int64) (*L2Table, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.l2Table(off)
}

// l2Table returns the L2 table at off; img.mu must be held.
func (img *Image) l2Table(off int64) (*L2Table, error) {
	if t := img.l2.get(off); t != nil {
		return t, nil
	}
	cs := img.h.ClusterSize()
	if off <= 0 || off&(cs-1) != 0 {
		return nil, corrupt("L2 table offset %#x is not a valid cluster offset", off)
	}
	if off > img.fileSize-cs {
		return nil, corrupt("L2 table at %#x extends past the end of the file (%d bytes)", off, img.fileSize)
	}
	buf := make([]byte, cs)
	if err := readFull(img.r, buf, off); err != nil {
		return nil, err
	}
	t := &L2Table{Offset: off, data: buf, h: img.h}
	img.l2.put(off, t)
	return t, nil
}

// Extent returns the extent of guest bytes starting at off, as this image
// alone defines them (see layer.Image). With extended L2 entries the
// granularity is the subcluster. Neighbouring (sub)clusters of the same kind
// whose host offsets are contiguous are merged within one L2 table; runs of
// unallocated L1 entries are merged across tables.
func (img *Image) Extent(off int64) (layer.Extent, error) {
	return img.extent(off, img.VirtualSize())
}

// ExtentBefore is Extent for a caller that needs nothing past limit: the
// extent may end there instead of running on (layer.Bounded).
func (img *Image) ExtentBefore(off, limit int64) (layer.Extent, error) {
	return img.extent(off, limit)
}

// unit is one (sub)cluster's mapping.
type unit struct {
	kind       layer.Kind
	host       int64 // host offset of the unit's first byte, or -1
	compressed bool
}

func (img *Image) extent(off, limit int64) (layer.Extent, error) {
	size := img.VirtualSize()
	if off < 0 || off >= size {
		return layer.Extent{}, errcode.New(errcode.BadArguments, "qcow2: offset %d outside the virtual size %d", off, size)
	}
	limit = min(limit, size)
	cb := img.h.ClusterBits
	cs := img.h.ClusterSize()
	nl2 := int64(img.h.L2Entries())
	span := nl2 << cb // guest bytes per L1 entry
	l1i := off / span

	l2off := int64(img.l1[l1i] & L1OffsetMask)
	if l2off == 0 {
		end := (l1i + 1) * span
		for end < limit && img.l1[end/span]&L1OffsetMask == 0 {
			end += span
		}
		return layer.Extent{Start: off, Length: min(end, limit) - off, Kind: layer.Unallocated, HostOffset: -1}, nil
	}
	if l2off&(cs-1) != 0 {
		return layer.Extent{}, corrupt("L2 table offset %#x is not cluster aligned (L1 index %d)", l2off, l1i)
	}
	img.mu.Lock()
	t, err := img.l2Table(l2off)
	img.mu.Unlock()
	if err != nil {
		return layer.Extent{}, err
	}

	us := img.h.SubclusterSize()
	tableStart := l1i * span
	tableEnd := min(tableStart+span, limit)
	ustart := off &^ (us - 1)
	u, end, err := img.unitAt(t, ustart)
	if err != nil {
		return layer.Extent{}, err
	}
	e := layer.Extent{Start: off, Kind: u.kind, HostOffset: u.host, Compressed: u.compressed}
	if u.host >= 0 {
		e.HostOffset = u.host + (off - ustart)
	}
	// Where the run of units that share u's mapping ends depends only on
	// the table's entries, not on which L1 entry names the table: it is
	// remembered, so that L1 entries naming one table do not cost a scan of
	// it each.
	img.mu.Lock()
	runEnd, known := t.run(ustart - tableStart)
	img.mu.Unlock()
	if known {
		end = max(end, tableStart+runEnd)
	} else {
		natural := false // the scan found the run's end, not the limit's
		for end < tableEnd {
			n, nend, err := img.unitAt(t, end)
			if err != nil {
				// Report what is known; the bad unit errors when it is reached.
				natural = true
				break
			}
			if n.kind != u.kind || n.compressed != u.compressed ||
				(n.host < 0) != (u.host < 0) || (n.host >= 0 && n.host != e.HostOffset+(end-off)) {
				natural = true
				break
			}
			// Entries that are all zero bytes decode alike: once one of
			// them has matched (with no host offset to advance), the
			// rest of their run is skipped without decoding each (the
			// L2 tables of a sparse 1 TiB image are mostly such runs).
			if end&(cs-1) == 0 && n.host < 0 {
				if z := t.zeroEntries(int((end - tableStart) >> cb)); z > 0 {
					nend = max(nend, end+int64(z)<<cb)
				}
			}
			end = nend
		}
		if natural || end >= tableStart+span {
			img.mu.Lock()
			t.setRun(ustart-tableStart, end-tableStart)
			img.mu.Unlock()
		}
	}
	e.Length = min(end, limit) - off
	return e, nil
}

// unitAt decodes the mapping of guest offset goff (aligned to the subcluster
// size) from its L2 table t, validating host offsets. It returns the mapping
// of goff and the end of the run of guest bytes in goff's cluster that share
// it (the host offset advancing with the guest offset).
func (img *Image) unitAt(t *L2Table, goff int64) (unit, int64, error) {
	cs := img.h.ClusterSize()
	cstart := goff &^ (cs - 1)
	e := t.Entry(int((goff >> img.h.ClusterBits) % int64(t.Len())))
	st, end := img.runIn(e, goff-cstart)
	end += cstart
	inCluster := goff - cstart
	switch st {
	case SubclusterUnallocatedPlain:
		return unit{kind: layer.Unallocated, host: -1}, end, nil
	case SubclusterUnallocatedAlloc:
		if err := img.checkHost(e, goff); err != nil {
			return unit{}, 0, err
		}
		// qemu reports the host offset of an unallocated subcluster whose
		// cluster is allocated; map prints it.
		return unit{kind: layer.Unallocated, host: e.HostOffset + inCluster}, end, nil
	case SubclusterZeroPlain:
		return unit{kind: layer.Zero, host: -1}, end, nil
	case SubclusterZeroAlloc:
		if err := img.checkHost(e, goff); err != nil {
			return unit{}, 0, err
		}
		return unit{kind: layer.Zero, host: e.HostOffset + inCluster}, end, nil
	case SubclusterNormal:
		if err := img.checkHost(e, goff); err != nil {
			return unit{}, 0, err
		}
		host := e.HostOffset + inCluster
		if host >= img.fileSize {
			return unit{}, 0, corrupt("data for guest offset %#x is at host offset %#x, past the end of the file (%d bytes)", goff, host, img.fileSize)
		}
		return unit{kind: layer.Data, host: host}, end, nil
	case SubclusterCompressed:
		if err := img.checkCompressed(e, goff); err != nil {
			return unit{}, 0, err
		}
		return unit{kind: layer.Data, host: -1, compressed: true}, end, nil
	}
	return unit{}, 0, corrupt("invalid extended L2 bitmap %#016x for guest offset %#x (L2 table %#x)", e.Bitmap, goff, t.Offset)
}

// runIn returns the state of the subcluster at byte inCluster of the cluster
// that e maps, and the in-cluster offset where the run of subclusters in the
// same state ends.
func (img *Image) runIn(e L2Entry, inCluster int64) (SubclusterType, int64) {
	cs := img.h.ClusterSize()
	if !e.extended || e.Type == ClusterCompressed {
		return e.Subcluster(0), cs
	}
	us := img.h.SubclusterSize()
	sc := int(inCluster / us)
	st := e.Subcluster(sc)
	if st == SubclusterInvalid {
		return st, cs
	}
	// Subclusters sc.. whose alloc and zero bits equal sc's share its state.
	alloc := uint32(e.Bitmap)
	zero := uint32(e.Bitmap >> 32)
	i := sc + 1
	for i < SubclustersPerCluster && (alloc>>i)&1 == (alloc>>sc)&1 && (zero>>i)&1 == (zero>>sc)&1 {
		i++
	}
	return st, int64(i) * us
}

func (img *Image) checkHost(e L2Entry, goff int64) error {
	if e.HostOffset&(img.h.ClusterSize()-1) != 0 {
		return corrupt("cluster offset %#x for guest offset %#x is not cluster aligned", e.HostOffset, goff)
	}
	return nil
}

func (img *Image) checkCompressed(e L2Entry, goff int64) error {
	if e.HostOffset <= 0 || e.HostOffset >= img.fileSize {
		return errcode.New(errcode.Qcow2BadCompressed, "qcow2: compressed cluster for guest offset %#x is at host offset %#x, outside the file (%d bytes)", goff, e.HostOffset, img.fileSize)
	}
	return nil
}

// ReadAt reads guest bytes as this image alone defines them: unallocated and
// zero ranges read as zeros. Reads past the virtual size return io.EOF.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	size := img.VirtualSize()
	if off < 0 {
		return 0, errcode.New(errcode.BadArguments, "qcow2: negative read offset %d", off)
	}
	if off >= size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > size-off {
		p = p[:size-off]
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		e, err := img.extent(pos, off+int64(len(p)))
		if err != nil {
			return done, err
		}
		n := int(e.Length)
		dst := p[done : done+n]
		switch {
		case e.Kind != layer.Data:
			clear(dst)
		case e.Compressed:
			if err := img.readCompressedRange(dst, pos); err != nil {
				return done, err
			}
		default:
			if e.HostOffset+int64(n) > img.fileSize {
				return done, corrupt("data for guest offset %#x (%d bytes at host offset %#x) extends past the end of the file (%d bytes)", pos, n, e.HostOffset, img.fileSize)
			}
			if err := readFull(img.r, dst, e.HostOffset); err != nil {
				return done, err
			}
		}
		done += n
	}
	if len(p) < want {
		return done, io.EOF
	}
	return done, nil
}

// readCompressedRange fills dst with guest bytes starting at pos, all inside
// compressed clusters.
func (img *Image) readCompressedRange(dst []byte, pos int64) error {
	cs := img.h.ClusterSize()
	for len(dst) > 0 {
		cstart := pos &^ (cs - 1)
		n := min(int64(len(dst)), cstart+cs-pos)
		if err := img.readFromCompressedCluster(dst[:n], pos); err != nil {
			return err
		}
		dst = dst[n:]
		pos += n
	}
	return nil
}

func (img *Image) readFromCompressedCluster(dst []byte, pos int64) error {
	cs := img.h.ClusterSize()
	nl2 := int64(img.h.L2Entries())
	ci := pos >> img.h.ClusterBits
	img.mu.Lock()
	defer img.mu.Unlock()
	t, err := img.l2Table(int64(img.l1[ci/nl2] & L1OffsetMask))
	if err != nil {
		return err
	}
	e := t.Entry(int(ci % nl2))
	if e.Type != ClusterCompressed {
		return errcode.New(errcode.Internal, "qcow2: cluster at guest offset %#x changed type while reading", pos)
	}
	data, err := img.decompressLocked(e, pos)
	if err != nil {
		return err
	}
	copy(dst, data[pos&(cs-1):])
	return nil
}

// ReadCompressedCluster decompresses the compressed cluster that entry e
// describes into a new cluster-sized buffer. goff is the guest offset, used
// in error messages only.
func (img *Image) ReadCompressedCluster(e L2Entry, goff int64) ([]byte, error) {
	if e.Type != ClusterCompressed {
		return nil, errcode.New(errcode.BadArguments, "qcow2: L2 entry %#x is not compressed", e.Raw)
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	data, err := img.decompressLocked(e, goff)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(data))
	copy(out, data)
	return out, nil
}

// l2Cache is a small LRU of L2 tables keyed by host offset.
type l2Cache struct {
	cap   int
	order *list.List // of *L2Table, most recent first
	byOff map[int64]*list.Element
}

func (c *l2Cache) init(n int) {
	c.cap = n
	c.order = list.New()
	c.byOff = make(map[int64]*list.Element)
}

func (c *l2Cache) get(off int64) *L2Table {
	el, ok := c.byOff[off]
	if !ok {
		return nil
	}
	c.order.MoveToFront(el)
	return el.Value.(*L2Table)
}

func (c *l2Cache) put(off int64, t *L2Table) {
	if el, ok := c.byOff[off]; ok {
		el.Value = t
		c.order.MoveToFront(el)
		return
	}
	if c.order.Len() >= c.cap {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byOff, last.Value.(*L2Table).Offset)
	}
	c.byOff[off] = c.order.PushFront(t)
}

// ReadL1Table reads an L1 table of n entries at host offset off, such as a
// snapshot's. off must be cluster aligned, n at most MaxL1Entries and the
// table inside the file.
func (img *Image) ReadL1Table(off uint64, n uint32) ([]uint64, error) {
	if n > MaxL1Entries {
		return nil, corrupt("L1 table at %#x has %d entries, more than %d", off, n, MaxL1Entries)
	}
	if err := img.h.checkTable("L1 table", off, uint64(n)*8, img.fileSize); err != nil {
		return nil, err
	}
	return readTable(img.r, int64(off), int(n))
}
