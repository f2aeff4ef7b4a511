package qcow2

// Emptying an overlay after commit (qemu's bdrv_make_empty), built on the
// Writer's tables and allocator.

import (
	"encoding/binary"
	"slices"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/scratch"
)

// EmptyFile is what MakeEmpty needs besides the Writer's File.
type EmptyFile interface {
	// Cut shortens the file to size and makes that durable; nothing
	// writes to the file afterwards.
	Cut(size int64) error
	// PunchHole deallocates [off, off+n) of the file, keeping its size.
	PunchHole(off, n int64) error
}

// EmptyResult says what MakeEmpty did.
type EmptyResult struct {
	// Cleared counts the L2 entries that were allocated (data, zero or
	// compressed) before emptying.
	Cleared int64
	// Complete is set when the image was rebuilt as "completely empty";
	// otherwise every cluster was discarded and the file keeps its length.
	Complete bool
}

// MakeEmpty makes every cluster of the image unallocated, as qemu does to the
// top image after a commit:
//
//   - a version 3 image without internal snapshots or bitmaps, whose metadata
//     has the layout of a freshly created image (refcount table of one
//     cluster at cluster 1, its first refcount block at cluster 2, the L1
//     table at cluster 3), is made "completely empty" like qemu's
//     make_completely_empty: the header regenerated, the refcount table,
//     one refcount block and the L1 table at clusters 1, 2 and 3.., and the
//     file truncated to (3 + L1 clusters) clusters;
//   - any other image has every cluster discarded (its L2 entries cleared,
//     its data clusters freed and their space punched out of the file); the
//     file keeps its length and the L2 tables stay, as with qemu for
//     version 2 images and images with snapshots.
//
// Crash safety: the first thing written is the cleared L1 table (or the
// cleared L2 entries), made durable before any refcount is lowered, so a
// crash leaves at worst leaked clusters and the image reads what its backing
// file reads, which after a commit is what it read before. The refcount
// structures of the completely-empty layout are then rewritten in place, each
// step only lowering refcounts of clusters nothing references: the refcount
// table first (unless it lists only its first block already), then its first
// block with the header. The file is cut once all of that is durable.
//
// MakeEmpty ends the Writer's use: it must not be used afterwards.
func (w *Writer) MakeEmpty(f EmptyFile) (EmptyResult, error) {
	var res EmptyResult
	if err := w.Flush(); err != nil {
		return res, err
	}
	if w.emptyCount < 0 {
		if err := w.CheckEmptiable(); err != nil {
			return res, err
		}
	}
	res.Cleared = w.emptyCount
	if w.canEmptyCompletely() {
		res.Complete = true
		return res, w.emptyCompletely(f)
	}
	hosts, _, err := w.allocatedClusters(true)
	if err != nil {
		return res, err
	}
	if err := w.Unmap(0, int64(w.h.Size)); err != nil {
		return res, err
	}
	if err := w.Flush(); err != nil {
		return res, err
	}
	for _, h := range hosts {
		rc, err := w.refcount(h >> w.cb)
		if err != nil {
			return res, err
		}
		if rc == 0 && h+w.cs <= w.fileSize {
			if err := f.PunchHole(h, w.cs); err != nil {
				return res, err
			}
		}
	}
	return res, w.sync()
}

// CheckEmptiable reports, without writing anything, an error MakeEmpty would
// meet only after it had started: a regenerated header that does not fit in
// cluster 0, an L2 table that cannot be read. Commit calls it before it
// touches the base. It also counts the allocated entries, which MakeEmpty
// reports (the image must not be written in between): emptying, once the
// base is durable, then does not walk the L2 tables to count them.
func (w *Writer) CheckEmptiable() error {
	if w.canEmptyCompletely() {
		h := w.h.clone()
		h.IncompatibleFeatures &^= IncompatDirty
		buf, err := h.EncodeCluster0()
		if err != nil {
			return err
		}
		w.emptyCluster0 = buf
	}
	_, n, err := w.allocatedClusters(false)
	if err == nil {
		w.emptyCount = n
	}
	return err
}

// allocatedClusters walks the active L2 tables: the number of allocated
// entries and, with withHosts, the host clusters of data and allocated zero
// clusters that the image owns alone (candidates for a hole once freed).
func (w *Writer) allocatedClusters(withHosts bool) (hosts []int64, n int64, err error) {
	for l1i := range w.l1 {
		t, err := w.tableFor(int64(l1i), false)
		if err != nil {
			return nil, 0, err
		}
		if t == nil {
			continue
		}
		for i := int64(0); i < w.nl2; i++ {
			if int64(l1i)*w.span()+i*w.cs >= int64(w.h.Size) {
				break
			}
			raw, bitmap := w.rawEntry(t, i)
			if raw == 0 && bitmap == 0 {
				continue // most entries of a sparse image: not decoded
			}
			e := w.h.DecodeL2Entry(raw, bitmap)
			n++
			if withHosts && (e.Type == ClusterNormal || e.Type == ClusterZeroAlloc) && e.HostOffset > 0 {
				hosts = append(hosts, e.HostOffset)
			}
		}
	}
	return hosts, n, nil
}

// l1Clusters is the number of clusters the L1 table takes.
func (w *Writer) l1Clusters() int64 {
	return (int64(len(w.l1))*8 + w.cs - 1) / w.cs
}

// canEmptyCompletely reports whether the completely-empty rebuild applies
// and can be done in place.
func (w *Writer) canEmptyCompletely() bool {
	h := w.h
	if h.Version < 3 || h.NbSnapshots != 0 || h.AutoclearFeatures&AutoclearBitmaps != 0 ||
		h.IncompatibleFeatures&IncompatDataFile != 0 || h.CryptMethod != 0 {
		return false
	}
	if _, ok := h.Extension(ExtBitmaps); ok {
		return false
	}
	l1c := w.l1Clusters()
	return 3+l1c <= w.rbEntries &&
		int64(h.RefcountTableOffset) == w.cs && h.RefcountTableClusters == 1 &&
		int64(h.L1TableOffset) == 3*w.cs &&
		len(w.rt) > 0 && int64(w.rt[0]&RefcountTableOffsetMask) == 2*w.cs
}

// emptyCompletely rebuilds the fresh layout in place; see MakeEmpty.
func (w *Writer) emptyCompletely(f EmptyFile) error {
	l1c := w.l1Clusters()
	// 1. The L1 table, cleared: from here on nothing references an L2
	// table or a data cluster.
	if err := w.write(make([]byte, len(w.l1)*8), 3*w.cs); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	// 2. The refcount table with only its first block: the other blocks
	// described clusters that are no longer referenced. It is made durable
	// before the first block is rewritten, which drops those blocks' own
	// refcounts. A table that already reads so (no other block: a file
	// below the span of one block, 2 GiB with 64 KiB clusters) is neither
	// written nor synced.
	if w.rt[0] != uint64(2*w.cs) || slices.ContainsFunc(w.rt[1:], func(e uint64) bool { return e != 0 }) {
		rt := scratch.Get(int(w.cs))
		defer scratch.Put(rt)
		clear(rt)
		binary.BigEndian.PutUint64(rt, uint64(2*w.cs))
		if err := w.write(rt, w.cs); err != nil {
			return err
		}
		if err := w.sync(); err != nil {
			return err
		}
	}
	// 3. The first block: the header, the two refcount clusters and the L1
	// table. Whichever of it and the header reaches the disk first, the
	// refcounts are right or too high (leaks): nothing else is referenced.
	rb := scratch.Get(int(w.cs))
	defer scratch.Put(rb)
	clear(rb)
	for ci := int64(0); ci < 3+l1c; ci++ {
		setRefcount(rb, w.h.RefcountOrder, ci, 1)
	}
	if err := w.write(rb, 2*w.cs); err != nil {
		return err
	}
	// 4. The header, regenerated (qemu marks the image clean, which calls
	// qcow2_update_header), in the same sync as the block: CheckEmptiable,
	// which MakeEmpty has run, encoded it.
	if w.emptyCluster0 == nil {
		return errcode.New(errcode.Internal, "qcow2: emptying without the header CheckEmptiable encodes (was the image written in between?)")
	}
	if err := w.write(w.emptyCluster0, 0); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	// 5. Everything past the metadata is unreferenced.
	return f.Cut((3 + l1c) * w.cs)
}
