package qcow2

// The write side.
//
// A Writer changes one qcow2 image in place the way qemu 7.2 would: the
// same placement of new clusters, the same L1/L2/refcount bytes, the same
// header cluster. Its output is byte-identical to qemu's for the same
// sequence of guest writes, which is what rebase relies on; commit uses the
// same allocator for bases.
//
// # Model
//
// NewWriter loads the header, the active L1 table and the refcount table.
// L2 tables and refcount blocks are loaded when first touched and kept in
// memory, with their on-disk state, until Flush writes the changed ones.
// Clusters are allocated exactly as qemu's alloc_clusters_noref /
// update_refcount / alloc_refcount_block do: first fit from a free cluster
// index that starts at 0 and moves back whenever a refcount drops to 0 (so
// freed clusters are reused first), a run of n clusters for a write of n
// clusters, an L2 table allocated just before the first data cluster that
// needs it, new refcount blocks placed so that they describe themselves,
// and the refcount table grown (and the old one freed) the way
// qcow2_refcount_area does. L2 entries of new data clusters and L1 entries of
// new L2 tables carry OflagCopied. An L2 table that is shared with an
// internal snapshot (L1 entry without OflagCopied) is copied before it is
// changed and the old table's refcount is decremented; shared data clusters
// are never written in place.
//
// # Operations
//
//   - WriteData writes guest data at a (sub)cluster-aligned guest offset,
//     allocating clusters as needed; WriteFrom does the same with data that
//     a Source stores itself (a range of another image, which the kernel can
//     copy without it passing through memory).
//   - WriteZeroes makes (sub)clusters read as zero: the zero flag (version 3),
//     the zero bits (extended L2), or explicit zero data clusters (version 2).
//   - Unmap deallocates whole clusters and frees their host clusters.
//   - Resize grows the virtual size, reallocating the L1 table when needed.
//   - SetBacking stages a new backing file name and format; RewriteHeader
//     stages a regeneration of cluster 0 without other change.
//   - Flush makes every change so far durable, in a crash-safe order.
//   - Finish flushes and then switches the header.
//
// # Ordering and crash safety
//
// Guest data goes to newly allocated clusters immediately; those clusters
// are not referenced by anything on disk yet. Metadata is written by Flush in
// this order, each group followed by fdatasync when it wrote anything:
//
//  1. refcount blocks, with every refcount at the larger of its old and new
//     value (increments only), and new refcount table entries;
//  2. L2 tables;
//  3. the L1 table (and the header's L1 fields when the table moved);
//  4. refcount blocks again with their final values (decrements).
//
// So a refcount is raised, durably, before any L2 entry points at the cluster,
// an L2 table is durable before the L1 entry that points at it, and a refcount
// is only lowered once nothing on disk references the cluster. A cluster whose
// refcount dropped to 0 in the current epoch is not reused before a Flush.
// Moving the refcount table or the L1 table (growth) happens synchronously
// when it is needed: the new table is written and synced, then the header
// fields are switched and synced, and only then is the old table freed.
// Finish writes the header cluster last. A crash at any write can leak
// clusters but never leaves a reference to an unallocated or wrongly
// refcounted cluster, and never changes what the guest reads through the
// image before Finish's header switch, except for WriteData or WriteZeroes
// on clusters the active L2 already owns (which are in-place writes by
// definition).
//
// All writes go through the File passed to NewWriter; the worker passes its
// fault-injecting ImageFile. A Writer is not safe for concurrent use.

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
)

var _ layer.Writer = (*Writer)(nil)

// File is the image file a Writer changes.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Datasync makes written data durable (fdatasync).
	Datasync() error
}

// Source is the content of a write (WriteFrom), addressed from 0 at the
// write's first guest byte.
type Source interface {
	// WriteTo writes the source's bytes [off, off+n) into f at offset host.
	WriteTo(f File, host, off, n int64) error
	// ReadAt fills p with the source's bytes from off on, for the clusters
	// whose new content the Writer must assemble in memory (the parts of a
	// cluster a write does not cover).
	ReadAt(p []byte, off int64) error
}

// Bytes is a Source held in memory.
type Bytes []byte

// WriteTo writes b[off:off+n] at host.
func (b Bytes) WriteTo(f File, host, off, n int64) error {
	_, err := f.WriteAt(b[off:off+n], host)
	return err
}

// ReadAt copies b[off:] into p.
func (b Bytes) ReadAt(p []byte, off int64) error {
	copy(p, b[off:])
	return nil
}

// WriterStats counts what a Writer did.
type WriterStats struct {
	// DataClusters is the number of host clusters allocated for guest data.
	DataClusters int64
	// MetadataClusters is the number of host clusters allocated for L1 and
	// L2 tables, refcount blocks and refcount tables.
	MetadataClusters int64
	// BytesWritten is the number of guest bytes written by WriteData.
	BytesWritten int64
}

// Writer changes one qcow2 image in place. See the package's write-side
// documentation above for the model and the ordering guarantees.
type Writer struct {
	f        File
	h        *Header // working header: sizes and table offsets are kept current
	fileSize int64   // size of the file as far as the Writer knows
	cs       int64
	cb       uint32
	nl2      int64 // entries per L2 table
	ext      bool  // extended L2 entries
	sc       int64 // subcluster size

	l1     []uint64
	l1Disk []uint64

	tables map[int64]*wtable // L2 tables by host offset

	rt        []uint64
	rtDirty   map[int64]bool
	blocks    map[int64]*wblock
	rbBits    uint32 // log2 of refcounts per block
	rbEntries int64

	freeIndex   int64          // qemu's free_cluster_index
	freedEpoch  map[int64]bool // clusters whose refcount reached 0 since the last Flush
	dataPending bool           // guest data written since the last Flush
	undoing     bool           // updateRefcount is undoing its own increments

	backing     *stagedBacking
	regenHeader bool
	sizeChanged bool

	emptyCount int64 // allocated L2 entries CheckEmptiable counted, or -1
	// emptyCluster0 is the first cluster of the completely empty image,
	// encoded by CheckEmptiable (nothing writes the image before MakeEmpty).
	emptyCluster0 []byte

	stats WriterStats
}

// stagedBacking is a backing file change waiting for Finish.
type stagedBacking struct {
	name, format string
}

// wtable is an L2 table held by a Writer.
type wtable struct {
	off   int64
	data  []byte
	dirty bool
}

// NewWriter opens the qcow2 image in f, whose file is fileSize bytes long, for
// writing. Images marked dirty or corrupt are refused (QCOW2_CORRUPT): their
// refcounts cannot be trusted for allocation.
func NewWriter(f File, fileSize int64) (*Writer, error) {
	h, err := ReadHeader(f, fileSize)
	if err != nil {
		return nil, err
	}
	if h.Corrupt() {
		return nil, errcode.New(errcode.Qcow2Corrupt, "qcow2: the image is marked corrupt; repair it first")
	}
	if h.Dirty() {
		return nil, errcode.New(errcode.Qcow2Corrupt, "qcow2: the image is marked dirty (lazy refcounts); repair it with check -r first")
	}
	w := &Writer{
		f:          f,
		h:          h.clone(),
		fileSize:   fileSize,
		cs:         h.ClusterSize(),
		cb:         h.ClusterBits,
		nl2:        int64(h.L2Entries()),
		ext:        h.ExtendedL2(),
		sc:         h.SubclusterSize(),
		tables:     map[int64]*wtable{},
		rtDirty:    map[int64]bool{},
		blocks:     map[int64]*wblock{},
		freedEpoch: map[int64]bool{},
		emptyCount: -1,
	}
	w.rbBits = h.ClusterBits + 3 - h.RefcountOrder
	w.rbEntries = int64(1) << w.rbBits
	if w.l1, err = readTable(f, int64(h.L1TableOffset), int(h.L1Size)); err != nil {
		return nil, err
	}
	w.l1Disk = slices.Clone(w.l1)
	n := int(uint64(h.RefcountTableClusters) << h.ClusterBits / 8)
	if w.rt, err = readTable(f, int64(h.RefcountTableOffset), n); err != nil {
		return nil, err
	}
	return w, nil
}

// Header returns a copy of the working header: the header as read, with the
// virtual size and the L1 and refcount table fields as they are now.
func (w *Writer) Header() *Header { return w.h.clone() }

// Stats reports what the Writer has done so far.
func (w *Writer) Stats() WriterStats { return w.stats }

// span is the number of guest bytes one L1 entry maps.
func (w *Writer) span() int64 { return w.nl2 << w.cb }

// limit is the end of the last cluster that holds guest bytes.
func (w *Writer) limit() int64 {
	return (int64(w.h.Size) + w.cs - 1) &^ (w.cs - 1)
}

func (w *Writer) write(p []byte, off int64) error {
	if _, err := w.f.WriteAt(p, off); err != nil {
		return errcode.New(errcode.WriteFailed, "qcow2: write of %d bytes at %#x: %v", len(p), off, err)
	}
	if end := off + int64(len(p)); end > w.fileSize {
		w.fileSize = end
	}
	return nil
}

// store writes the source's bytes [off, off+n) at host offset host.
func (w *Writer) store(src Source, off, n, host int64) error {
	if err := src.WriteTo(w.f, host, off, n); err != nil {
		if e := (*errcode.Error)(nil); errors.As(err, &e) {
			return err // the source's own failure (reading another image)
		}
		return errcode.New(errcode.WriteFailed, "qcow2: write of %d bytes at %#x: %v", n, host, err)
	}
	if end := host + n; end > w.fileSize {
		w.fileSize = end
	}
	return nil
}

func (w *Writer) sync() error {
	if err := w.f.Datasync(); err != nil {
		return errcode.New(errcode.WriteFailed, "qcow2: fdatasync: %v", err)
	}
	return nil
}

// checkRange validates a guest range for a write: aligned to the subcluster
// size at both ends (the end may also be the virtual size) and inside the
// clusters that hold guest bytes.
func (w *Writer) checkRange(what string, goff, n int64) error {
	end := goff + n
	switch {
	case goff < 0 || n < 0 || end < goff:
		return errcode.New(errcode.BadArguments, "qcow2: %s: bad range %d+%d", what, goff, n)
	case goff%w.sc != 0 || (end%w.sc != 0 && end != int64(w.h.Size)):
		return errcode.New(errcode.BadArguments, "qcow2: %s: range %#x+%#x is not aligned to %d bytes", what, goff, n, w.sc)
	case end > w.limit():
		return errcode.New(errcode.BadArguments, "qcow2: %s: range %#x+%#x is past the virtual size %d", what, goff, n, w.h.Size)
	}
	return nil
}

// table returns the L2 table at host offset off, reading it on first use.
func (w *Writer) table(off int64) (*wtable, error) {
	if t, ok := w.tables[off]; ok {
		return t, nil
	}
	if off <= 0 || off&(w.cs-1) != 0 {
		return nil, corrupt("L2 table offset %#x is not a valid cluster offset", off)
	}
	if off+w.cs > w.fileSize {
		return nil, corrupt("L2 table at %#x extends past the end of the file (%d bytes)", off, w.fileSize)
	}
	buf := make([]byte, w.cs)
	if err := readFull(w.f, buf, off); err != nil {
		return nil, err
	}
	t := &wtable{off: off, data: buf}
	w.tables[off] = t
	return t, nil
}

// tableFor returns the L2 table of L1 index l1i, or nil when there is none
// and alloc is false. With alloc it allocates a table for an empty L1 entry
// and copies a table shared with a snapshot (get_cluster_table).
func (w *Writer) tableFor(l1i int64, alloc bool) (*wtable, error) {
	if l1i < 0 || l1i >= int64(len(w.l1)) {
		return nil, errcode.New(errcode.BadArguments, "qcow2: L1 index %d outside the table (%d entries)", l1i, len(w.l1))
	}
	e := w.l1[l1i]
	off := int64(e & L1OffsetMask)
	if off != 0 && (e&L1ReservedMask != 0 || off&(w.cs-1) != 0) {
		return nil, corrupt("L1 entry %d (%#x) is invalid", l1i, e)
	}
	if !alloc {
		if off == 0 {
			return nil, nil
		}
		return w.table(off)
	}
	if off != 0 && e&OflagCopied != 0 {
		return w.table(off)
	}
	// l2_allocate: a new table, a copy of the shared one if there is one.
	var old *wtable
	if off != 0 {
		var err error
		if old, err = w.table(off); err != nil {
			return nil, err
		}
	}
	noff, err := w.allocClusters(1)
	if err != nil {
		return nil, err
	}
	w.stats.MetadataClusters++
	if err := w.guardReuse(noff, 1); err != nil {
		return nil, err
	}
	t := &wtable{off: noff, data: make([]byte, w.cs), dirty: true}
	if old != nil {
		copy(t.data, old.data)
	}
	w.tables[noff] = t
	w.l1[l1i] = uint64(noff) | OflagCopied
	if off != 0 {
		if err := w.freeClusters(off, w.cs); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// guardReuse flushes before clusters freed in this epoch are used again, so
// that the references they had are gone from the disk first.
func (w *Writer) guardReuse(off, n int64) error {
	for ci := off >> w.cb; ci < off>>w.cb+n; ci++ {
		if w.freedEpoch[ci] {
			return w.Flush()
		}
	}
	return nil
}

func (w *Writer) entry(t *wtable, i int64) L2Entry {
	return w.h.DecodeL2Entry(w.rawEntry(t, i))
}

// rawEntry returns entry i of t undecoded: the L2 entry and, with extended
// L2 entries, the subcluster bitmap.
func (w *Writer) rawEntry(t *wtable, i int64) (raw, bitmap uint64) {
	if w.ext {
		return binary.BigEndian.Uint64(t.data[16*i:]), binary.BigEndian.Uint64(t.data[16*i+8:])
	}
	return binary.BigEndian.Uint64(t.data[8*i:]), 0
}

func (w *Writer) setEntry(t *wtable, i int64, raw, bitmap uint64) {
	if w.ext {
		binary.BigEndian.PutUint64(t.data[16*i:], raw)
		binary.BigEndian.PutUint64(t.data[16*i+8:], bitmap)
	} else {
		binary.BigEndian.PutUint64(t.data[8*i:], raw)
	}
	t.dirty = true
}

// subRange is the extended L2 bitmap of subclusters [a, b) (byte offsets in
// the cluster, subcluster aligned) in the allocation half.
func (w *Writer) subRange(a, b int64) uint64 {
	first, last := a/w.sc, (b+w.sc-1)/w.sc
	return (uint64(1)<<last - 1) &^ (uint64(1)<<first - 1)
}

// needsAlloc reports whether a write to the cluster e maps needs a new host
// cluster (cluster_needs_new_alloc).
func needsAlloc(e L2Entry) bool {
	switch e.Type {
	case ClusterNormal, ClusterZeroAlloc:
		return !e.Copied
	}
	return true
}

// WriteData writes p at guest offset goff. goff and len(p) must be multiples
// of the subcluster size (the end may be the virtual size, and may run to
// the end of the last cluster). Clusters the active L2 owns with refcount 1
// are written in place; the others get new host clusters, allocated as qemu
// allocates them for one write request. With standard L2 entries a write
// must cover every cluster it allocates whole, unless the old cluster's
// content is known (a shared data cluster, which is copied, or a zero
// cluster); with extended L2 entries partial clusters are fine.
func (w *Writer) WriteData(goff int64, p []byte) error {
	return w.WriteFrom(goff, int64(len(p)), Bytes(p))
}

// WriteFrom writes the n bytes of src at guest offset goff, as WriteData
// writes them. src stores the bytes itself wherever the clusters they go
// to are covered whole or are written in place; the Writer reads them from
// src only to assemble a cluster in memory.
func (w *Writer) WriteFrom(goff, n int64, src Source) error {
	if err := w.checkRange("write", goff, n); err != nil {
		return err
	}
	w.stats.BytesWritten += n
	d := wdata{src: src, start: goff}
	for end := goff + n; goff < end; {
		l1i := goff / w.span()
		t, err := w.tableFor(l1i, true)
		if err != nil {
			return err
		}
		tend := min(end, (l1i+1)*w.span())
		if err := w.writeInTable(t, goff, tend, d); err != nil {
			return err
		}
		goff = tend
	}
	return nil
}

// wdata is the source of one write and the guest offset of its first byte.
type wdata struct {
	src   Source
	start int64
}

// storeData writes the data of guest range [goff, end) at host offset host.
func (w *Writer) storeData(d wdata, goff, end, host int64) error {
	return w.store(d.src, goff-d.start, end-goff, host)
}

// writeInTable writes the data of [goff, end), all inside the L2 table t.
func (w *Writer) writeInTable(t *wtable, goff, end int64, d wdata) error {
	for goff < end {
		i := (goff >> w.cb) % w.nl2
		e := w.entry(t, i)
		cstart := goff &^ (w.cs - 1)
		if !needsAlloc(e) {
			runEnd := w.inPlaceEnd(t, i, e, goff, end)
			if err := w.writeInPlace(t, i, e, goff, runEnd, d); err != nil {
				return err
			}
			goff = runEnd
			continue
		}
		// A run of clusters that need new host clusters.
		nc := int64(1)
		for c := cstart + w.cs; c < end && needsAlloc(w.entry(t, (c>>w.cb)%w.nl2)); c += w.cs {
			nc++
		}
		runEnd := min(end, cstart+nc*w.cs)
		if err := w.writeAlloc(t, goff, runEnd, d, nc); err != nil {
			return err
		}
		goff = runEnd
	}
	return nil
}

// inPlaceEnd returns where the run that writeInPlace writes from goff (in
// cluster i, whose entry is e) ends: through the clusters the image owns
// that follow e's on the host, up to end, so that data lying back to back in
// both files moves in one write. A cluster that reads as zero and is written
// only in part is written whole, on its own.
func (w *Writer) inPlaceEnd(t *wtable, i int64, e L2Entry, goff, end int64) int64 {
	runEnd := min(end, (goff&^(w.cs-1))+w.cs)
	if w.zeroInPart(e, goff, runEnd) {
		return runEnd
	}
	for host := e.HostOffset + w.cs; runEnd < end; host += w.cs {
		i++
		n, next := w.entry(t, i), min(end, runEnd+w.cs)
		if needsAlloc(n) || n.HostOffset != host || w.zeroInPart(n, runEnd, next) {
			break
		}
		runEnd = next
	}
	return runEnd
}

// zeroInPart reports whether [goff, end), inside the cluster of entry e,
// writes only part of a cluster that reads as zero (standard L2 entries).
func (w *Writer) zeroInPart(e L2Entry, goff, end int64) bool {
	return !w.ext && e.Type == ClusterZeroAlloc && (goff&(w.cs-1) != 0 || end-goff != w.cs)
}

// writeInPlace writes the data of [goff, end) into the clusters the image
// owns with refcount 1 from cluster i (entry e) on, back to back on the host
// (inPlaceEnd), and updates their entries.
func (w *Writer) writeInPlace(t *wtable, i int64, e L2Entry, goff, end int64, d wdata) error {
	in := goff & (w.cs - 1)
	host := e.HostOffset
	if host+(in+end-goff+w.cs-1)&^(w.cs-1) > MaxHostOffset {
		return corrupt("cluster offset %#x is invalid", host)
	}
	if w.zeroInPart(e, goff, end) {
		// The cluster reads as zero: write it whole.
		buf := make([]byte, w.cs)
		if err := d.src.ReadAt(buf[in:in+end-goff], goff-d.start); err != nil {
			return err
		}
		if err := w.write(buf, host); err != nil {
			return err
		}
		goff, end = goff-in, goff-in+w.cs
	} else if err := w.storeData(d, goff, end, host+in); err != nil {
		return err
	}
	w.dataPending = true
	for ; goff < end; i++ {
		cend := min(end, (goff&^(w.cs-1))+w.cs)
		e := w.entry(t, i)
		raw, bm := e.Raw, e.Bitmap
		if w.ext {
			in := goff & (w.cs - 1)
			r := w.subRange(in, in+cend-goff)
			bm = (bm | r) &^ (r << 32)
		} else {
			raw = uint64(e.HostOffset) | OflagCopied
		}
		if raw != e.Raw || bm != e.Bitmap {
			w.setEntry(t, i, raw, bm)
		}
		goff = cend
	}
	return nil
}

// writeAlloc writes the data of [goff, end) into nc new contiguous host
// clusters.
func (w *Writer) writeAlloc(t *wtable, goff, end int64, d wdata, nc int64) error {
	host, err := w.allocClusters(nc)
	if err != nil {
		return err
	}
	w.stats.DataClusters += nc
	if err := w.guardReuse(host, nc); err != nil {
		return err
	}
	cstart := goff &^ (w.cs - 1)
	head := goff - cstart
	tail := (cstart + nc*w.cs) - end
	if !w.ext && (head != 0 || tail != 0) || w.ext && w.needsFill(t, cstart, nc) {
		// Fill the uncovered parts of the first and last clusters from
		// what they held.
		buf := make([]byte, nc*w.cs)
		if err := d.src.ReadAt(buf[head:head+end-goff], goff-d.start); err != nil {
			return err
		}
		for _, c := range []int64{cstart, cstart + (nc-1)*w.cs} {
			a := max(goff, c) - c
			b := min(end, c+w.cs) - c
			if a == 0 && b == w.cs {
				continue
			}
			if err := w.fillOld(t, c, buf[c-cstart:c-cstart+w.cs], a, b); err != nil {
				return err
			}
		}
		if err := w.write(buf, host); err != nil {
			return err
		}
	} else if err := w.storeData(d, goff, end, host+head); err != nil {
		return err
	}
	w.dataPending = true
	for k := int64(0); k < nc; k++ {
		c := cstart + k*w.cs
		i := (c >> w.cb) % w.nl2
		e := w.entry(t, i)
		raw := uint64(host+k*w.cs) | OflagCopied
		var bm uint64
		if w.ext {
			a := max(goff, c) - c
			b := min(end, c+w.cs) - c
			r := w.subRange(a, b)
			// A copied shared cluster keeps its bitmap (its unallocated
			// subclusters still read from the backing file); a compressed
			// one is data throughout.
			old := e.Bitmap
			if e.Type == ClusterCompressed {
				old = BitmapAllocMask
			}
			bm = (old | r) &^ (r << 32)
		}
		if err := w.releaseOld(e); err != nil {
			return err
		}
		w.setEntry(t, i, raw, bm)
	}
	return nil
}

// needsFill reports whether, with extended L2 entries, any of the nc clusters
// from cstart holds data that a new host cluster must carry over (a shared
// or compressed cluster).
func (w *Writer) needsFill(t *wtable, cstart, nc int64) bool {
	for k := int64(0); k < nc; k++ {
		e := w.entry(t, ((cstart+k*w.cs)>>w.cb)%w.nl2)
		if e.Type == ClusterNormal || e.Type == ClusterCompressed {
			return true
		}
	}
	return false
}

// fillOld fills the bytes of dst (one cluster, guest offset c) outside [a, b)
// with the cluster's current content.
func (w *Writer) fillOld(t *wtable, c int64, dst []byte, a, b int64) error {
	e := w.entry(t, (c>>w.cb)%w.nl2)
	switch e.Type {
	case ClusterZeroPlain, ClusterZeroAlloc:
		return nil // zeros
	case ClusterNormal:
		// With extended L2 entries the bytes of unallocated subclusters
		// are copied too; their bitmap keeps them unallocated.
		old := make([]byte, w.cs)
		if err := readFull(w.f, old, e.HostOffset); err != nil {
			return err
		}
		copy(dst[:a], old[:a])
		copy(dst[b:], old[b:])
		return nil
	case ClusterUnallocated:
		if w.ext {
			return nil // the untouched subclusters stay unallocated
		}
		return errcode.New(errcode.BadArguments, "qcow2: write of %#x..%#x does not cover unallocated cluster %#x whole", c+a, c+b, c)
	}
	return errcode.New(errcode.BadArguments, "qcow2: partial write to compressed cluster %#x", c)
}

// releaseOld drops the reference an L2 entry being replaced held.
func (w *Writer) releaseOld(e L2Entry) error {
	switch e.Type {
	case ClusterNormal, ClusterZeroAlloc:
		return w.freeClusters(e.HostOffset, w.cs)
	case ClusterCompressed:
		return w.freeCompressed(e)
	}
	return nil
}

// freeCompressed drops the references of a compressed cluster descriptor
// (every host cluster its sectors touch, as qcow2_free_any_cluster does).
func (w *Writer) freeCompressed(e L2Entry) error {
	start := e.HostOffset &^ (CompressedSectorSize - 1)
	n := (e.HostOffset - start) + e.CompressedSize
	return w.freeClusters(start, n)
}

// WriteZeroes makes [goff, goff+n) read as zero. The range must be aligned
// as for WriteData; with standard L2 entries in a version 3 image it must
// cover whole clusters (the end may be the virtual size).
//
// Version 3: whole clusters get the zero flag (standard L2) or all zero bits
// (extended L2); with layer.MayUnmap, or for compressed clusters, their host
// clusters are freed (otherwise they are kept as "zero, allocated"). Partial clusters with extended L2 get zero bits for
// their subclusters. Version 2, which has no zero flag: explicit zero data
// is written (allocating), as qemu falls back to.
func (w *Writer) WriteZeroes(goff, n int64, flags layer.ZeroFlags) error {
	if err := w.checkRange("write zeroes", goff, n); err != nil {
		return err
	}
	end := goff + n
	if w.h.Version < 3 {
		const chunk = 16 << 20
		zero := make([]byte, min(n, chunk))
		for goff < end {
			m := min(end-goff, chunk)
			if err := w.WriteData(goff, zero[:m]); err != nil {
				return err
			}
			goff += m
		}
		return nil
	}
	for goff < end {
		cstart := goff &^ (w.cs - 1)
		cend := min(end, cstart+w.cs)
		whole := goff == cstart && (cend == cstart+w.cs || cend == int64(w.h.Size))
		if !whole && !w.ext {
			return errcode.New(errcode.BadArguments, "qcow2: write zeroes of %#x..%#x covers cluster %#x partly", goff, cend, cstart)
		}
		t, err := w.tableFor(cstart/w.span(), true)
		if err != nil {
			return err
		}
		i := (cstart >> w.cb) % w.nl2
		e := w.entry(t, i)
		if whole {
			unmap := e.Type == ClusterCompressed ||
				flags&layer.MayUnmap != 0 && (e.Type == ClusterNormal || e.Type == ClusterZeroAlloc)
			raw, bm := e.Raw, e.Bitmap
			if unmap {
				raw = 0
			}
			if w.ext {
				bm = BitmapZeroMask
			} else {
				raw |= OflagZero
			}
			if raw != e.Raw || bm != e.Bitmap {
				w.setEntry(t, i, raw, bm)
				if unmap {
					if err := w.releaseOld(e); err != nil {
						return err
					}
				}
			}
		} else {
			if e.Type == ClusterCompressed {
				return errcode.New(errcode.BadArguments, "qcow2: cannot zero part of compressed cluster %#x", cstart)
			}
			r := w.subRange(goff-cstart, cend-cstart)
			bm := (e.Bitmap | r<<32) &^ r
			if bm != e.Bitmap {
				w.setEntry(t, i, e.Raw, bm)
			}
		}
		goff = cend
	}
	return nil
}

// Unmap deallocates the whole clusters in [goff, goff+n) (goff cluster
// aligned; the end a cluster boundary or the virtual size): their L2
// entries become unallocated, so they read from the backing file again, and
// their host clusters are freed once the entries are durable.
func (w *Writer) Unmap(goff, n int64) error {
	if err := w.checkRange("unmap", goff, n); err != nil {
		return err
	}
	end := goff + n
	if goff%w.cs != 0 || (end%w.cs != 0 && end != int64(w.h.Size)) {
		return errcode.New(errcode.BadArguments, "qcow2: unmap range %#x+%#x is not cluster aligned", goff, n)
	}
	for c := goff; c < end; c += w.cs {
		t, err := w.tableFor(c/w.span(), false)
		if err != nil {
			return err
		}
		if t == nil {
			c = (c/w.span()+1)*w.span() - w.cs
			continue
		}
		l1e := w.l1[c/w.span()]
		if l1e&OflagCopied == 0 {
			// Shared with a snapshot: copy before changing.
			if t, err = w.tableFor(c/w.span(), true); err != nil {
				return err
			}
		}
		i := (c >> w.cb) % w.nl2
		e := w.entry(t, i)
		if e.Raw == 0 && e.Bitmap == 0 {
			continue
		}
		w.setEntry(t, i, 0, 0)
		if err := w.releaseOld(e); err != nil {
			return err
		}
	}
	return nil
}

// Lookup reports the state of the (sub)cluster at guest offset goff as the
// Writer holds it now, and its host offset (-1 when it has none; the start
// of the compressed data for compressed clusters).
func (w *Writer) Lookup(goff int64) (SubclusterType, int64, error) {
	if goff < 0 || goff >= w.limit() {
		return 0, -1, errcode.New(errcode.BadArguments, "qcow2: offset %d outside the virtual size %d", goff, w.h.Size)
	}
	t, err := w.tableFor(goff/w.span(), false)
	if err != nil || t == nil {
		return SubclusterUnallocatedPlain, -1, err
	}
	e := w.entry(t, (goff>>w.cb)%w.nl2)
	st := e.Subcluster(int((goff & (w.cs - 1)) / w.sc))
	switch st {
	case SubclusterNormal, SubclusterZeroAlloc:
		return st, e.HostOffset + goff&(w.cs-1), nil
	case SubclusterCompressed:
		return st, e.HostOffset, nil
	}
	return st, -1, nil
}

// Resize grows the virtual size to size bytes, reallocating the L1 table
// (exactly sized, as qemu's truncate does) when it is too small. The new
// size is written to the header by Finish.
func (w *Writer) Resize(size int64) error {
	if size < int64(w.h.Size) {
		return errcode.New(errcode.BadArguments, "qcow2: shrinking from %d to %d bytes is not supported", w.h.Size, size)
	}
	if size%512 != 0 {
		return errcode.New(errcode.BadArguments, "qcow2: size %d is not a multiple of 512", size)
	}
	need := requiredL1(uint64(size), w.cb, w.h.L2EntrySize())
	if need > MaxL1Entries {
		return errcode.New(errcode.ImageTooLarge, "qcow2: virtual size %d needs %d L1 entries, more than %d", size, need, MaxL1Entries)
	}
	if need > uint64(len(w.l1)) {
		if err := w.growL1(int64(need)); err != nil {
			return err
		}
	}
	if uint64(size) != w.h.Size {
		w.h.Size = uint64(size)
		w.sizeChanged = true
	}
	return nil
}

// growL1 moves the L1 table to a new place with n entries
// (qcow2_grow_l1_table with exact_size).
func (w *Writer) growL1(n int64) error {
	if err := w.Flush(); err != nil {
		return err
	}
	nbytes := n * 8
	nc := (nbytes + w.cs - 1) / w.cs
	off, err := w.allocClusters(nc)
	if err != nil {
		return err
	}
	w.stats.MetadataClusters += nc
	if err := w.writeBlocks(true); err != nil {
		return err
	}
	nl1 := make([]uint64, n)
	copy(nl1, w.l1)
	buf := make([]byte, nbytes)
	for i, v := range nl1 {
		binary.BigEndian.PutUint64(buf[8*i:], v)
	}
	if err := w.write(buf, off); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	var hdr [12]byte
	binary.BigEndian.PutUint32(hdr[0:], uint32(n))
	binary.BigEndian.PutUint64(hdr[4:], uint64(off))
	if err := w.write(hdr[:], 36); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	oldOff, oldBytes := int64(w.h.L1TableOffset), int64(len(w.l1))*8
	w.l1 = nl1
	w.l1Disk = slices.Clone(nl1)
	w.h.L1Size = uint32(n)
	w.h.L1TableOffset = uint64(off)
	if oldBytes > 0 {
		return w.freeClusters(oldOff, oldBytes)
	}
	return nil
}

// SetBacking stages a new backing file name and backing format for Finish;
// an empty name detaches (the format is then ignored). The new header
// cluster is built now, so a name that is too long or does not fit fails
// here (BACKING_NAME_TOO_LONG, BACKING_NAME_NO_ROOM) before anything is
// written.
func (w *Writer) SetBacking(name, format string) error {
	if name == "" {
		format = ""
	}
	if _, err := w.h.WithBacking(name, format).EncodeCluster0(); err != nil {
		return err
	}
	w.backing = &stagedBacking{name: name, format: format}
	return nil
}

// RewriteHeader stages a regeneration of cluster 0 by Finish even when the
// backing file does not change (qemu's qcow2_update_header).
func (w *Writer) RewriteHeader() { w.regenHeader = true }

// Flush writes every metadata change made so far, in the crash-safe order
// described in the package documentation, and makes it durable.
func (w *Writer) Flush() error {
	if err := w.writeBlocks(true); err != nil {
		return err
	}
	if w.dataPending {
		if err := w.sync(); err != nil {
			return err
		}
		w.dataPending = false
	}
	// L2 tables.
	offs := make([]int64, 0)
	for off, t := range w.tables {
		if t.dirty {
			offs = append(offs, off)
		}
	}
	slices.Sort(offs)
	for _, off := range offs {
		if err := w.write(w.tables[off].data, off); err != nil {
			return err
		}
		w.tables[off].dirty = false
	}
	if len(offs) > 0 {
		if err := w.sync(); err != nil {
			return err
		}
	}
	// L1 table, in 512-byte pieces as qemu writes it.
	const per = 64
	wrote := false
	for s := 0; s < len(w.l1); s += per {
		e := min(s+per, len(w.l1))
		if slices.Equal(w.l1[s:e], w.l1Disk[s:e]) {
			continue
		}
		buf := make([]byte, 8*(e-s))
		for i := s; i < e; i++ {
			binary.BigEndian.PutUint64(buf[8*(i-s):], w.l1[i])
		}
		if err := w.write(buf, int64(w.h.L1TableOffset)+8*int64(s)); err != nil {
			return err
		}
		copy(w.l1Disk[s:e], w.l1[s:e])
		wrote = true
	}
	if wrote {
		if err := w.sync(); err != nil {
			return err
		}
	}
	// Decrements last.
	if err := w.writeBlocks(false); err != nil {
		return err
	}
	clear(w.freedEpoch)
	return nil
}

// Finish flushes, then writes the header: the whole of cluster 0 when a
// backing change or a rewrite is staged, otherwise the virtual size field
// when Resize changed it. It syncs after the header write.
func (w *Writer) Finish() error {
	if err := w.Flush(); err != nil {
		return err
	}
	switch {
	case w.backing != nil || w.regenHeader:
		h := w.h
		if w.backing != nil {
			h = h.WithBacking(w.backing.name, w.backing.format)
		}
		buf, err := h.EncodeCluster0()
		if err != nil {
			return err
		}
		if err := w.write(buf, 0); err != nil {
			return err
		}
		w.h = h
	case w.sizeChanged:
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], w.h.Size)
		if err := w.write(b[:], 24); err != nil {
			return err
		}
	default:
		return nil
	}
	w.backing, w.regenHeader, w.sizeChanged = nil, false, false
	return w.sync()
}

// ReclaimLeaks lowers the refcounts of leaked clusters, as found by Check on
// this image before any change, to the number of their references, so that
// the allocator reuses them (what `qemu-img check -r leaks` does). Nothing on
// disk references the extra counts, so they may be lowered at any time; the
// new values are written by the next Flush. A leak that no longer matches the
// refcount the Writer holds is refused (QCOW2_CORRUPT).
//
// A cluster the active tables reference keeps its count when lowering it
// would leave it at 1: its entry would then need the COPIED flag, which
// qemu's repair sets and this Writer does not. With its count it stays
// consistent and is copied on write, as qemu-img copies it. (What an
// interrupted operation leaks is either unreferenced or referenced by a
// snapshot's tables only.)
func (w *Writer) ReclaimLeaks(leaks []Leak) error {
	ones := map[int64]bool{}
	for _, l := range leaks {
		if l.Cluster < 0 || l.Stored <= l.Referenced {
			return errcode.New(errcode.BadArguments, "qcow2: bad leak record for cluster %d", l.Cluster)
		}
		if l.Referenced == 1 {
			ones[l.Cluster] = true
		}
	}
	active, err := w.activelyReferenced(ones)
	if err != nil {
		return err
	}
	for _, l := range leaks {
		if active[l.Cluster] {
			continue
		}
		ti := l.Cluster >> w.rbBits
		if ti >= int64(len(w.rt)) || w.rt[ti]&RefcountTableOffsetMask == 0 {
			return corrupt("leaked cluster %d has no refcount block", l.Cluster)
		}
		b, err := w.loadBlock(int64(w.rt[ti] & RefcountTableOffsetMask))
		if err != nil {
			return err
		}
		i := l.Cluster & (w.rbEntries - 1)
		if got := getRefcount(b.mem, w.h.RefcountOrder, i); got != l.Stored {
			return corrupt("leaked cluster %d has refcount %d, the check saw %d", l.Cluster, got, l.Stored)
		}
		setRefcount(b.mem, w.h.RefcountOrder, i, l.Referenced)
		if l.Referenced == 0 && l.Cluster < w.freeIndex {
			w.freeIndex = l.Cluster
		}
	}
	return nil
}

// activelyReferenced returns which of clusters the active tables reference
// where qemu's check wants the COPIED flag to match the refcount: L2 tables
// the active L1 table names, and data or allocated zero clusters (not
// compressed ones) in those tables.
func (w *Writer) activelyReferenced(clusters map[int64]bool) (map[int64]bool, error) {
	out := map[int64]bool{}
	if len(clusters) == 0 {
		return out, nil
	}
	err := w.activeTables(func(off int64, t *wtable) {
		if clusters[off>>w.cb] {
			out[off>>w.cb] = true
		}
		for i := range w.nl2 {
			raw, _ := w.rawEntry(t, i)
			if raw&OflagCompressed != 0 || raw&L2OffsetMask == 0 {
				continue
			}
			if k := int64(raw&L2OffsetMask) >> w.cb; clusters[k] {
				out[k] = true
			}
		}
	})
	return out, err
}

// activeTables calls fn with each L2 table the active L1 table names, at
// offset off. A table the Writer has not loaded is read into one buffer for
// the call, not kept.
func (w *Writer) activeTables(fn func(off int64, t *wtable)) error {
	spare := &wtable{data: make([]byte, w.cs)}
	for _, e := range w.l1 {
		off := int64(e & L1OffsetMask)
		if off == 0 {
			continue
		}
		t, ok := w.tables[off]
		if !ok {
			if err := readFull(w.f, spare.data, off); err != nil {
				return err
			}
			t = spare
		}
		fn(off, t)
	}
	return nil
}
