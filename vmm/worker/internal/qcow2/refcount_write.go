package qcow2

import (
	"encoding/binary"
	"errors"
	"slices"

	"instarfs/errcode"
)

// errAgain is qemu's -EAGAIN from alloc_refcount_block: metadata was
// allocated, restart the search for free clusters.
var errAgain = errors.New("qcow2: restart allocation")

// wblock is a refcount block held by a Writer.
type wblock struct {
	off  int64
	mem  []byte // current refcounts
	disk []byte // what the file holds (nil: never written, reads as zeros)
}

func getRefcount(data []byte, order uint32, i int64) uint64 {
	switch order {
	case 0, 1, 2:
		bits := uint64(1) << order
		per := 8 / int64(bits)
		shift := uint64(i%per) * bits
		return uint64(data[i/per]>>shift) & (1<<bits - 1)
	case 3:
		return uint64(data[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(data[2*i:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(data[4*i:]))
	}
	return binary.BigEndian.Uint64(data[8*i:])
}

func setRefcount(data []byte, order uint32, i int64, v uint64) {
	switch order {
	case 0, 1, 2:
		bits := uint64(1) << order
		per := 8 / int64(bits)
		shift := uint64(i%per) * bits
		mask := byte((1<<bits - 1) << shift)
		data[i/per] = data[i/per]&^mask | byte(v<<shift)&mask
	case 3:
		data[i] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(data[2*i:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(data[4*i:], uint32(v))
	default:
		binary.BigEndian.PutUint64(data[8*i:], v)
	}
}

// maxRefcount is the largest refcount representable with the image's width.
func (w *Writer) maxRefcount() uint64 {
	if w.h.RefcountOrder >= 6 {
		return ^uint64(0)
	}
	return uint64(1)<<(uint64(1)<<w.h.RefcountOrder) - 1
}

// loadBlock returns the refcount block at off, reading it on first use.
func (w *Writer) loadBlock(off int64) (*wblock, error) {
	if b, ok := w.blocks[off]; ok {
		return b, nil
	}
	if off <= 0 || off&(w.cs-1) != 0 {
		return nil, corrupt("refcount block offset %#x is not a valid cluster offset", off)
	}
	buf := make([]byte, w.cs)
	if off >= w.fileSize {
		return nil, corrupt("refcount block at %#x lies past the end of the file (%d bytes)", off, w.fileSize)
	}
	// A block cut short by the end of the file reads as zeros past it, as
	// qemu (and Check) read it; writing the block extends the file.
	if err := readFull(w.f, buf[:min(w.cs, w.fileSize-off)], off); err != nil {
		return nil, err
	}
	b := &wblock{off: off, mem: buf, disk: slices.Clone(buf)}
	w.blocks[off] = b
	return b, nil
}

// newBlock installs an all-zero refcount block at off (qcow2_cache_get_empty).
func (w *Writer) newBlock(off int64) *wblock {
	b := &wblock{off: off, mem: make([]byte, w.cs)}
	if old, ok := w.blocks[off]; ok {
		b.disk = old.disk
	}
	w.blocks[off] = b
	return b
}

// refcount returns the refcount of cluster ci (qcow2_get_refcount).
func (w *Writer) refcount(ci int64) (uint64, error) {
	ti := ci >> w.rbBits
	if ti >= int64(len(w.rt)) {
		return 0, nil
	}
	off := int64(w.rt[ti] & RefcountTableOffsetMask)
	if off == 0 {
		return 0, nil
	}
	b, err := w.loadBlock(off)
	if err != nil {
		return 0, err
	}
	return getRefcount(b.mem, w.h.RefcountOrder, ci&(w.rbEntries-1)), nil
}

// allocNoref finds n free contiguous clusters from the free cluster index
// without changing refcounts (alloc_clusters_noref).
func (w *Writer) allocNoref(n int64) (int64, error) {
retry:
	for i := int64(0); i < n; i++ {
		ci := w.freeIndex
		w.freeIndex++
		rc, err := w.refcount(ci)
		if err != nil {
			return 0, err
		}
		if rc != 0 {
			goto retry
		}
	}
	if w.freeIndex<<w.cb > MaxHostOffset {
		return 0, errcode.New(errcode.Qcow2NoSpace, "qcow2: no free clusters below the maximum host offset")
	}
	return (w.freeIndex - n) << w.cb, nil
}

// allocClusters allocates n contiguous clusters with refcount 1
// (qcow2_alloc_clusters).
func (w *Writer) allocClusters(n int64) (int64, error) {
	for {
		off, err := w.allocNoref(n)
		if err != nil {
			return 0, err
		}
		err = w.updateRefcount(off, n<<w.cb, 1, false)
		if err == errAgain {
			continue
		}
		if err != nil {
			return 0, err
		}
		return off, nil
	}
}

// freeClusters decrements the refcount of the clusters covering
// [off, off+length) (qcow2_free_clusters).
func (w *Writer) freeClusters(off, length int64) error {
	err := w.updateRefcount(off, length, 1, true)
	if err == errAgain {
		return corrupt("freeing clusters at %#x that have no refcount block", off)
	}
	return err
}

// updateRefcount adds (or subtracts) addend to the refcounts of the clusters
// covering [off, off+length), allocating refcount blocks as needed
// (update_refcount). errAgain means that a refcount block was allocated and
// the caller must search for free clusters again; the refcounts changed by
// this call have been restored.
func (w *Writer) updateRefcount(off, length int64, addend uint64, decrease bool) error {
	if length <= 0 {
		return nil
	}
	start := off &^ (w.cs - 1)
	last := (off + length - 1) &^ (w.cs - 1)
	var blk *wblock
	oldTI := int64(-1)
	done := start
	var err error
	for co := start; co <= last; co += w.cs {
		ci := co >> w.cb
		ti := ci >> w.rbBits
		if ti != oldTI {
			if decrease && (ti >= int64(len(w.rt)) || w.rt[ti]&RefcountTableOffsetMask == 0) {
				err = corrupt("refcount of cluster %#x would drop below 0", co)
				break
			}
			blk, err = w.allocRefcountBlock(ci)
			if err == errAgain {
				if w.freeIndex > start>>w.cb {
					w.freeIndex = start >> w.cb
				}
			}
			if err != nil {
				break
			}
			oldTI = ti
		}
		bi := ci & (w.rbEntries - 1)
		rc := getRefcount(blk.mem, w.h.RefcountOrder, bi)
		if decrease {
			if rc < addend {
				err = corrupt("refcount of cluster %#x would drop below 0", co)
				break
			}
			rc -= addend
		} else {
			if rc+addend < rc || rc+addend > w.maxRefcount() {
				err = corrupt("refcount of cluster %#x would overflow", co)
				break
			}
			rc += addend
		}
		if rc == 0 && ci < w.freeIndex {
			w.freeIndex = ci
		}
		if rc == 0 && decrease && !w.undoing {
			w.freedEpoch[ci] = true
		}
		setRefcount(blk.mem, w.h.RefcountOrder, bi, rc)
		done = co + w.cs
	}
	if err != nil && done > start {
		// Undo what this call changed, as qemu does. The clusters were
		// never referenced, so freeing them again needs no flush.
		undoing := w.undoing
		w.undoing = true
		uerr := w.updateRefcount(start, done-start, addend, !decrease)
		w.undoing = undoing
		if uerr != nil {
			return uerr
		}
	}
	return err
}

// allocRefcountBlock returns the refcount block covering cluster ci,
// allocating it (and growing the refcount table) when there is none
// (alloc_refcount_block).
func (w *Writer) allocRefcountBlock(ci int64) (*wblock, error) {
	ti := ci >> w.rbBits
	if ti < int64(len(w.rt)) {
		if off := int64(w.rt[ti] & RefcountTableOffsetMask); off != 0 {
			if w.rt[ti]&^RefcountTableOffsetMask != 0 || off&(w.cs-1) != 0 {
				return nil, corrupt("refcount block offset %#x is not cluster aligned (reftable index %d)", w.rt[ti], ti)
			}
			return w.loadBlock(off)
		}
	}

	nb, err := w.allocNoref(1)
	if err != nil {
		return nil, err
	}
	if nb == 0 {
		return nil, corrupt("refcount block allocated at offset 0")
	}
	w.stats.MetadataClusters++
	var blk *wblock
	if nb>>w.cb>>w.rbBits == ti {
		// The block describes itself.
		blk = w.newBlock(nb)
		setRefcount(blk.mem, w.h.RefcountOrder, (nb>>w.cb)&(w.rbEntries-1), 1)
	} else {
		// Described by another block; this recurses at most twice.
		if err := w.updateRefcount(nb, w.cs, 1, false); err != nil {
			return nil, err
		}
		blk = w.newBlock(nb)
	}

	if ti < int64(len(w.rt)) {
		w.rt[ti] = uint64(nb)
		w.rtDirty[ti] = true
		return nil, errAgain
	}

	// Grow the refcount table: new blocks and the new table go at the end
	// of what the blocks in use cover, describing themselves.
	used := (max(ci+1, nb>>w.cb+1) + w.rbEntries - 1) / w.rbEntries
	meta := used * w.rbEntries * w.cs
	if err := w.refcountArea(meta, 0, false, ti, nb); err != nil {
		return nil, err
	}
	return nil, errAgain
}

// refcountMetadataSize computes the number of refcount blocks needed to cover
// clusters clusters plus the refcount structures themselves
// (qcow2_refcount_metadata_size).
func refcountMetadataSize(clusters, cs int64, order uint32, generous bool) int64 {
	perTable := cs / 8
	perBlock := cs * 8 >> order
	var table, blocks, n, last int64
	for {
		last = n
		blocks = (clusters + table + blocks + perBlock - 1) / perBlock
		table = (blocks + perTable - 1) / perTable
		n = clusters + blocks + table
		if n == last && generous {
			clusters += (table + 1) / 2
			n = 0
			generous = false
		}
		if n == last {
			return blocks
		}
	}
}

// refcountArea creates a new refcount table, and the refcount blocks it
// needs, at start, switches the header to it and frees the old table
// (qcow2_refcount_area).
func (w *Writer) refcountArea(start, additional int64, exact bool, newIdx int64, newOff int64) error {
	total := refcountMetadataSize(start/w.cs+additional, w.cs, w.h.RefcountOrder, !exact)
	if total*8 > MaxRefcountTableBytes {
		return errcode.New(errcode.ImageTooLarge, "qcow2: the refcount table would exceed %d bytes", MaxRefcountTableBytes)
	}
	areaIdx := (start / w.cs) / w.rbEntries
	size := total
	if !exact {
		size = total + (total+1)/2
	}
	per := w.cs / 8
	size = (size + per - 1) / per * per
	tableClusters := size * 8 / w.cs
	if size*8 > MaxRefcountTableBytes {
		return errcode.New(errcode.ImageTooLarge, "qcow2: the refcount table would exceed %d bytes", MaxRefcountTableBytes)
	}
	nt := make([]uint64, size)
	maxIdx := w.maxRTIndex()
	if size > maxIdx {
		copy(nt, w.rt[:maxIdx+1])
	} else {
		copy(nt, w.rt[:size])
	}
	if newOff != 0 {
		nt[newIdx] = uint64(newOff)
	}
	var addBlocks int64
	for i := areaIdx; i < total; i++ {
		if nt[i] == 0 {
			addBlocks++
		}
	}
	tableOff := start + addBlocks*w.cs
	end := tableOff + tableClusters*w.cs
	bo := start
	for i := areaIdx; i < total; i++ {
		var blk *wblock
		if nt[i] != 0 {
			b, err := w.loadBlock(int64(nt[i] & RefcountTableOffsetMask))
			if err != nil {
				return err
			}
			blk = b
		} else {
			blk = w.newBlock(bo)
			nt[i] = uint64(bo)
			bo += w.cs
			w.stats.MetadataClusters++
		}
		first := i * w.rbEntries * w.cs
		if first < end {
			j := int64(0)
			if first < start {
				j = (start - first) / w.cs
			}
			e := min((end-first)/w.cs, w.rbEntries)
			for ; j < e; j++ {
				if getRefcount(blk.mem, w.h.RefcountOrder, j) != 0 {
					return corrupt("refcount of new metadata cluster %#x is not 0", first+j*w.cs)
				}
				setRefcount(blk.mem, w.h.RefcountOrder, j, 1)
			}
		}
	}
	w.stats.MetadataClusters += tableClusters

	// Make the blocks and the new table durable, then switch the header.
	if err := w.writeBlocks(true); err != nil {
		return err
	}
	buf := make([]byte, size*8)
	for i, v := range nt {
		binary.BigEndian.PutUint64(buf[8*i:], v)
	}
	if err := w.write(buf, tableOff); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	var hdr [12]byte
	binary.BigEndian.PutUint64(hdr[0:], uint64(tableOff))
	binary.BigEndian.PutUint32(hdr[8:], uint32(tableClusters))
	if err := w.write(hdr[:], 48); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	oldOff, oldLen := int64(w.h.RefcountTableOffset), int64(len(w.rt))*8
	w.rt = nt
	w.rtDirty = map[int64]bool{}
	w.h.RefcountTableOffset = uint64(tableOff)
	w.h.RefcountTableClusters = uint32(tableClusters)
	return w.freeClusters(oldOff, oldLen)
}

// maxRTIndex is the index of the last non-zero refcount table entry (0 when
// there is none).
func (w *Writer) maxRTIndex() int64 {
	for i := int64(len(w.rt)) - 1; i >= 0; i-- {
		if w.rt[i] != 0 {
			return i
		}
	}
	return 0
}

// writeBlocks writes the refcount blocks that differ from the file, then new
// refcount table entries, syncing after each group. With incOnly every
// refcount is written as the larger of its on-disk and in-memory value.
func (w *Writer) writeBlocks(incOnly bool) error {
	offs := make([]int64, 0, len(w.blocks))
	for off, b := range w.blocks {
		if b.disk == nil || !slices.Equal(b.mem, b.disk) {
			offs = append(offs, off)
		}
	}
	slices.Sort(offs)
	wrote := false
	for _, off := range offs {
		b := w.blocks[off]
		out := b.mem
		if incOnly && b.disk != nil {
			out = slices.Clone(b.mem)
			n := int64(len(out)) * 8 >> w.h.RefcountOrder
			for i := int64(0); i < n; i++ {
				if d := getRefcount(b.disk, w.h.RefcountOrder, i); d > getRefcount(out, w.h.RefcountOrder, i) {
					setRefcount(out, w.h.RefcountOrder, i, d)
				}
			}
			if slices.Equal(out, b.disk) {
				continue
			}
		}
		if err := w.write(out, off); err != nil {
			return err
		}
		b.disk = slices.Clone(out)
		wrote = true
	}
	if wrote {
		if err := w.sync(); err != nil {
			return err
		}
	}
	if len(w.rtDirty) > 0 {
		idx := make([]int64, 0, len(w.rtDirty))
		for i := range w.rtDirty {
			idx = append(idx, i)
		}
		slices.Sort(idx)
		var e [8]byte
		for _, i := range idx {
			binary.BigEndian.PutUint64(e[:], w.rt[i])
			if err := w.write(e[:], int64(w.h.RefcountTableOffset)+8*i); err != nil {
				return err
			}
		}
		w.rtDirty = map[int64]bool{}
		if err := w.sync(); err != nil {
			return err
		}
	}
	return nil
}
