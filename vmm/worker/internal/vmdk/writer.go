package vmdk

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
)

// File is what a Writer changes: an image file opened read-write. Every change
// goes through WriteAt, so a caller can count (and fault) them.
type File interface {
	io.ReaderAt
	WriteAt(p []byte, off int64) (int, error)
	Datasync() error
}

var _ layer.Writer = (*Writer)(nil)

// Writer changes a monolithicSparse vmdk in place: guest writes (grains
// allocated at the end of the file, grain tables allocated as needed),
// zeroed grains, emptying, and descriptor updates.
//
// Crash-safe ordering: new grains and new grain tables are written where
// nothing points at them yet; Flush makes them durable (fdatasync) before it
// writes the grain tables and then the grain directories that point at them,
// and syncs again. A crash at any point leaves at worst unreferenced space at
// the end of the file; vmdk has no reference counts, so that is not an error.
//
// A Writer works on its own copy of the directories and tables; the Image it
// was made from is not updated and must not be used to read changed ranges.
type Writer struct {
	img *Image
	f   File

	next    int64 // byte offset where the next grain or table goes
	gd, rgd []uint32
	gdDirty bool

	gts   map[uint32][]uint32 // grain tables by sector, primary and redundant
	dirty map[uint32]bool

	backing     io.ReaderAt // fills the rest of a partly written new grain
	backingSize int64

	desc      *Descriptor
	descDirty bool
}

// MaxWritableGrainBytes bounds the grain size of images a Writer changes: a
// grain is assembled in memory when it is written (qemu creates 64 KiB grains).
const MaxWritableGrainBytes = 16 << 20

// maxDirtyTables bounds the grain tables a Writer keeps changed in memory; past
// it the next write flushes.
const maxDirtyTables = 4096

// NewWriter returns a Writer for img, whose file is f. Compressed
// (streamOptimized) and version 3 images are refused (VMDK_READ_ONLY): qemu
// refuses to write them too.
func NewWriter(img *Image, f File) (*Writer, error) {
	if img.Compressed() || img.footer >= 0 {
		return nil, errcode.New(errcode.VmdkReadOnly, "streamOptimized vmdk images can only be read")
	}
	if img.grainBytes > MaxWritableGrainBytes {
		return nil, errcode.New(errcode.VmdkUnsupported, "vmdk grains of %d bytes are larger than the %d bytes instarfs writes", img.grainBytes, MaxWritableGrainBytes)
	}
	if img.h.Version == 3 {
		return nil, errcode.New(errcode.VmdkReadOnly, "vmdk version 3 images can only be read (as with qemu)")
	}
	if img.h.Flags&FlagMarkers != 0 {
		return nil, errcode.New(errcode.VmdkReadOnly, "vmdk images with grain markers can only be read")
	}
	w := &Writer{
		img: img, f: f,
		gd: img.GD(), rgd: img.RGD(),
		gts: map[uint32][]uint32{}, dirty: map[uint32]bool{},
		desc: img.Descriptor(),
	}
	used, err := w.referencedEnd()
	if err != nil {
		return nil, err
	}
	w.next = max(int64(img.h.OverHead)*SectorSize, roundUp(used, SectorSize))
	return w, nil
}

// referencedEnd checks the layout the writer is about to change and returns
// the end of the last byte anything in the image points at: the directories,
// the grain tables and their grains.
//
// A crafted image can make a grain table be the grain directory, lie on the
// header, or be shared by several directory entries, and a grain be shared or
// lie on metadata; writing through such aliases would change what the image
// reads elsewhere, so they are refused (VMDK_CORRUPT). Reading tolerates them.
//
// Space after the end was left by an interrupted write (vmdk has no reference
// counts to say so) and is reused, so that running an interrupted operation
// again gives the file an uninterrupted run would have given.
func (w *Writer) referencedEnd() (int64, error) {
	type span struct {
		start, end int64
		what       string
	}
	spans := []span{
		{0, SectorSize, "the header"},
		{w.img.descOffset, w.img.descOffset + w.img.descArea, "the descriptor"},
	}
	gtBytes := roundUp(int64(w.img.perGT)*4, SectorSize)
	for _, d := range []struct {
		dir    []uint32
		sector uint64
		what   string
	}{{w.gd, w.img.h.GDOffset, "grain directory"}, {w.rgd, w.img.h.RGDOffset, "redundant grain directory"}} {
		if d.dir == nil {
			continue
		}
		start := int64(d.sector) * SectorSize
		spans = append(spans, span{start, start + int64(len(d.dir))*4, "the " + d.what})
		seen := make(map[uint32]int, len(d.dir))
		for i, e := range d.dir {
			if e == 0 {
				continue
			}
			if j, dup := seen[e]; dup {
				return 0, errcode.New(errcode.VmdkCorrupt, "%s entries %d and %d share the grain table at sector %d; refusing to write", d.what, j, i, e)
			}
			seen[e] = i
			spans = append(spans, span{int64(e) * SectorSize, int64(e)*SectorSize + gtBytes, fmt.Sprintf("grain table %d of the %s", i, d.what)})
		}
	}
	end := int64(w.img.h.OverHead) * SectorSize
	for i := range w.gd {
		gt, err := w.img.GrainTable(i)
		if err != nil {
			return 0, err
		}
		for j, e := range gt {
			if e > 1 || e == 1 && !w.img.ZeroedGrains() { // 1 marks a zeroed grain
				start := int64(e) * SectorSize
				spans = append(spans, span{start, start + w.img.grainBytes, fmt.Sprintf("grain %d", uint64(i)*w.img.perGT+uint64(j))})
				end = max(end, start+w.img.grainBytes)
			}
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for k := 1; k < len(spans); k++ {
		if a, b := spans[k-1], spans[k]; b.start < a.end {
			return 0, errcode.New(errcode.VmdkCorrupt, "%s overlaps %s; refusing to write", b.what, a.what)
		}
	}
	for _, sp := range spans {
		end = max(end, sp.end)
	}
	return min(end, roundUp(w.img.fileSize, SectorSize)), nil
}

func roundUp(v, to int64) int64 { return (v + to - 1) / to * to }

// SetBacking sets the image read for the parts of a new grain a write does not
// cover: the parent's content (qemu's copy-on-write). Without it they are zero.
func (w *Writer) SetBacking(r io.ReaderAt, size int64) { w.backing, w.backingSize = r, size }

// UpdateDescriptor edits the embedded descriptor with fn; the result is
// checked at once and written by the next Flush, after the grain metadata.
func (w *Writer) UpdateDescriptor(fn func(*Descriptor) error) error {
	d := w.desc.Clone()
	if err := fn(d); err != nil {
		return err
	}
	if _, err := d.EncodeEmbedded(w.img.descArea); err != nil {
		return err
	}
	w.desc, w.descDirty = d, true
	return nil
}

// CID is the content ID the Writer's descriptor holds.
func (w *Writer) CID() (uint32, error) { return w.desc.CID() }

// table returns the grain table at sector, loading it.
func (w *Writer) table(sector uint32) ([]uint32, error) {
	if t, ok := w.gts[sector]; ok {
		return t, nil
	}
	size := int64(w.img.perGT) * 4
	off := int64(sector) * SectorSize
	if off < w.img.descOffset+w.img.descArea {
		return nil, errcode.New(errcode.VmdkCorrupt, "vmdk grain table at sector %d overlaps the header or the descriptor", sector)
	}
	buf := make([]byte, size)
	if err := readFull(w.f, buf, off); err != nil {
		return nil, err
	}
	t := make([]uint32, w.img.perGT)
	for i := range t {
		t[i] = binary.LittleEndian.Uint32(buf[4*i:])
	}
	w.gts[sector] = t
	return t, nil
}

// entry returns grain g's entry in the primary table (0 when no table).
func (w *Writer) entry(g uint64) (uint32, error) {
	gdi := g / w.img.perGT
	if w.gd[gdi] == 0 {
		return 0, nil
	}
	t, err := w.table(w.gd[gdi])
	if err != nil {
		return 0, err
	}
	return t[g%w.img.perGT], nil
}

// alloc reserves n bytes at the end of the file and returns their sector.
func (w *Writer) alloc(n int64) (uint32, error) {
	at := w.next
	if at/SectorSize+roundUp(n, SectorSize)/SectorSize > math.MaxUint32 {
		return 0, errcode.New(errcode.VmdkFileTooLarge, "vmdk file would grow past the 2 TiB a grain table can address")
	}
	w.next += roundUp(n, SectorSize)
	return uint32(at / SectorSize), nil
}

// newTable allocates a zeroed grain table, writes it, and returns its sector.
func (w *Writer) newTable() (uint32, error) {
	size := int64(w.img.perGT) * 4
	s, err := w.alloc(size)
	if err != nil {
		return 0, err
	}
	if err := w.write(make([]byte, roundUp(size, SectorSize)), int64(s)*SectorSize); err != nil {
		return 0, err
	}
	w.gts[s] = make([]uint32, w.img.perGT)
	return s, nil
}

// setEntry points grain g at v in the primary table and, when there is one, in
// the redundant table, allocating tables for a directory entry of 0.
func (w *Writer) setEntry(g uint64, v uint32) error {
	gdi := g / w.img.perGT
	dirs := [][]uint32{w.gd}
	if w.rgd != nil {
		dirs = append(dirs, w.rgd)
	}
	for _, dir := range dirs {
		if dir[gdi] == 0 {
			s, err := w.newTable()
			if err != nil {
				return err
			}
			dir[gdi] = s
			w.gdDirty = true
		}
		t, err := w.table(dir[gdi])
		if err != nil {
			return err
		}
		if t[g%w.img.perGT] != v {
			t[g%w.img.perGT] = v
			w.dirty[dir[gdi]] = true
		}
	}
	return nil
}

func (w *Writer) write(p []byte, off int64) error {
	if _, err := w.f.WriteAt(p, off); err != nil {
		return errcode.New(errcode.WriteFailed, "writing vmdk at offset %d: %v", off, err)
	}
	return nil
}

// grainRange checks that [off, off+n) lies in the disk.
func (w *Writer) grainRange(off, n int64) error {
	if off < 0 || n < 0 || off+n > w.img.vsize || off+n < off {
		return errcode.New(errcode.Internal, "vmdk write [%d, +%d) outside the disk of %d bytes", off, n, w.img.vsize)
	}
	return nil
}

// WriteData writes p at guest offset off. Allocated grains are overwritten
// in place; a new grain is appended to the file, its uncovered parts filled
// from the backing image (or zeros); zeroed grains are filled with zeros.
func (w *Writer) WriteData(off int64, p []byte) error {
	if err := w.grainRange(off, int64(len(p))); err != nil {
		return err
	}
	gb := w.img.grainBytes
	for len(p) > 0 {
		g := uint64(off / gb)
		in := off - int64(g)*gb
		n := min(int64(len(p)), gb-in)
		if err := w.writeGrain(g, in, p[:n]); err != nil {
			return err
		}
		off += n
		p = p[n:]
	}
	return w.maybeFlush()
}

func (w *Writer) writeGrain(g uint64, in int64, p []byte) error {
	gb := w.img.grainBytes
	e, err := w.entry(g)
	if err != nil {
		return err
	}
	if e > 1 || e == 1 && !w.img.h.ZeroedGrains() {
		host := int64(e) * SectorSize
		if host < int64(w.img.h.OverHead)*SectorSize || host >= w.next {
			return errcode.New(errcode.VmdkCorrupt, "vmdk grain %d at sector %d lies outside the grain area of the file", g, e)
		}
		// A last grain cut short by the end of the file: new grains go after
		// all of it.
		w.next = max(w.next, host+gb)
		return w.write(p, host+in)
	}
	buf := make([]byte, gb)
	if e == 0 && w.backing != nil && (in > 0 || int64(len(p)) < gb) {
		start := int64(g) * gb
		if start < w.backingSize {
			m := min(gb, w.backingSize-start)
			if n, err := w.backing.ReadAt(buf[:m], start); n < int(m) && err != nil {
				return errcode.New(errcode.ReadFailed, "reading the backing image at %d: %v", start, err)
			}
		}
	}
	copy(buf[in:], p)
	s, err := w.alloc(gb)
	if err != nil {
		return err
	}
	if err := w.write(buf, int64(s)*SectorSize); err != nil {
		return err
	}
	return w.setEntry(g, s)
}

// WriteZeroes makes [off, off+n) read as zeros. With zeroed grains (the
// header flag) whole grains become zeroed grains; everything else is written
// as zero data, as qemu does. The flags change nothing: a grain's space is
// never given back.
func (w *Writer) WriteZeroes(off, n int64, _ layer.ZeroFlags) error {
	if err := w.grainRange(off, n); err != nil {
		return err
	}
	gb := w.img.grainBytes
	zero := make([]byte, min(n, gb))
	for n > 0 {
		g := uint64(off / gb)
		in := off - int64(g)*gb
		m := min(n, gb-in)
		whole := in == 0 && (m == gb || off+m == w.img.vsize)
		if whole && w.img.h.ZeroedGrains() {
			if err := w.setEntry(g, 1); err != nil {
				return err
			}
		} else if err := w.writeGrain(g, in, zero[:m]); err != nil {
			return err
		}
		off += m
		n -= m
	}
	return w.maybeFlush()
}

// Discard makes every grain in [off, off+n) that lies wholly in the range
// unallocated again (grain table entry 0). The grains' space stays in the file.
func (w *Writer) Discard(off, n int64) error {
	if err := w.grainRange(off, n); err != nil {
		return err
	}
	gb := w.img.grainBytes
	for g := uint64((off + gb - 1) / gb); int64(g)*gb < off+n; g++ {
		if end := min(int64(g+1)*gb, w.img.vsize); end > off+n {
			break
		}
		if w.gd[g/w.img.perGT] == 0 {
			g = (g/w.img.perGT+1)*w.img.perGT - 1
			continue
		}
		e, err := w.entry(g)
		if err != nil {
			return err
		}
		if e != 0 {
			if err := w.setEntry(g, 0); err != nil {
				return err
			}
		}
	}
	return w.maybeFlush()
}

// AllocatedGrains counts the grains the image defines (data or zeroed).
func (w *Writer) AllocatedGrains() (int64, error) {
	var n int64
	seen := map[uint32]bool{}
	for gdi, s := range w.gd {
		if s == 0 || seen[s] {
			continue
		}
		seen[s] = true
		t, err := w.table(s)
		if err != nil {
			return 0, err
		}
		for i, e := range t {
			if g := uint64(gdi)*w.img.perGT + uint64(i); int64(g)*w.img.grainBytes >= w.img.vsize {
				break
			}
			if e != 0 {
				n++
			}
		}
	}
	return n, nil
}

func (w *Writer) maybeFlush() error {
	if len(w.dirty) < maxDirtyTables {
		return nil
	}
	return w.Flush()
}

// Flush makes everything written so far durable and visible: new grains and
// tables are synced, then the grain tables, the grain directories and the
// descriptor are written, then synced again.
func (w *Writer) Flush() error {
	if len(w.dirty) == 0 && !w.gdDirty && !w.descDirty {
		return nil
	}
	if err := w.sync(); err != nil {
		return err
	}
	for _, s := range sortedSectors(w.dirty) {
		t := w.gts[s]
		buf := make([]byte, len(t)*4)
		for i, e := range t {
			binary.LittleEndian.PutUint32(buf[4*i:], e)
		}
		if err := w.write(buf, int64(s)*SectorSize); err != nil {
			return err
		}
	}
	w.dirty = map[uint32]bool{}
	if w.gdDirty {
		if err := w.sync(); err != nil {
			return err
		}
		if w.rgd != nil {
			if err := w.writeDir(w.rgd, w.img.h.RGDOffset); err != nil {
				return err
			}
		}
		if err := w.writeDir(w.gd, w.img.h.GDOffset); err != nil {
			return err
		}
		w.gdDirty = false
	}
	if w.descDirty {
		buf, err := w.desc.EncodeEmbedded(w.img.descArea)
		if err != nil {
			return err
		}
		if err := w.write(buf, w.img.descOffset); err != nil {
			return err
		}
		w.descDirty = false
	}
	return w.sync()
}

// Finish is Flush: a vmdk has nothing to complete last.
func (w *Writer) Finish() error { return w.Flush() }

func (w *Writer) writeDir(dir []uint32, sector uint64) error {
	buf := make([]byte, len(dir)*4)
	for i, e := range dir {
		binary.LittleEndian.PutUint32(buf[4*i:], e)
	}
	return w.write(buf, int64(sector)*SectorSize)
}

func (w *Writer) sync() error {
	if err := w.f.Datasync(); err != nil {
		return errcode.New(errcode.WriteFailed, "syncing vmdk: %v", err)
	}
	return nil
}

func sortedSectors(m map[uint32]bool) []uint32 {
	return slices.Sorted(maps.Keys(m))
}

// Empty makes every grain unallocated (grain table entries 0, grain tables
// kept) and flushes. It returns the byte offsets of the data grains that are
// no longer referenced and lie wholly in the grain area, which the caller may
// punch out of the file, and the number of entries it cleared.
func (w *Writer) Empty() (freed []int64, cleared int64, err error) {
	meta := w.metadataSectors()
	gb := w.img.grainBytes
	var hosts []int64
	seen := map[uint32]bool{} // a table that several entries share is cleared once
	for gdi, s := range w.gd {
		if s == 0 || seen[s] {
			continue
		}
		seen[s] = true
		t, err := w.table(s)
		if err != nil {
			return nil, 0, err
		}
		for i, e := range t {
			if e == 0 {
				continue
			}
			cleared++
			if e > 1 || !w.img.h.ZeroedGrains() {
				hosts = append(hosts, int64(e)*SectorSize)
			}
			if err := w.setEntry(uint64(gdi)*w.img.perGT+uint64(i), 0); err != nil {
				return nil, 0, err
			}
		}
	}
	if err := w.Flush(); err != nil {
		return nil, 0, err
	}
	over := int64(w.img.h.OverHead) * SectorSize
	for _, h := range hosts {
		if h < over || h+gb > w.next || meta.overlaps(h, gb) {
			continue
		}
		freed = append(freed, h)
	}
	return freed, cleared, nil
}

// sectorSet is a set of byte ranges of metadata.
type sectorSet [][2]int64

func (s sectorSet) overlaps(off, n int64) bool {
	for _, r := range s {
		if off < r[1] && r[0] < off+n {
			return true
		}
	}
	return false
}

// metadataSectors lists where the grain tables and directories are.
func (w *Writer) metadataSectors() sectorSet {
	gt := roundUp(int64(w.img.perGT)*4, SectorSize)
	var s sectorSet
	for _, dir := range [][]uint32{w.gd, w.rgd} {
		for _, e := range dir {
			if e != 0 {
				s = append(s, [2]int64{int64(e) * SectorSize, int64(e)*SectorSize + gt})
			}
		}
	}
	s = append(s, [2]int64{int64(w.img.h.GDOffset) * SectorSize, int64(w.img.h.GDOffset)*SectorSize + int64(len(w.gd))*4})
	if w.rgd != nil {
		s = append(s, [2]int64{int64(w.img.h.RGDOffset) * SectorSize, int64(w.img.h.RGDOffset)*SectorSize + int64(len(w.rgd))*4})
	}
	return s
}
