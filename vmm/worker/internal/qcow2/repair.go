package qcow2

// `qemu-img check -r leaks|all`: the check of check.go, repairing as it goes.
//
// It follows qemu 7.2's qcow2_co_check_locked and qcow2_check_refcounts:
// the in-memory refcounts are computed and compared with the stored ones;
// when a referenced cluster has a stored refcount of 0, or a refcount block
// is unusable, the refcount structure is rebuilt from the in-memory
// refcounts (-r all; -r leaks fails); otherwise the refcounts are compared
// again, repairing leaks (-r leaks) and refcounts that are too low (-r all).
// Then the COPIED flags of the active L1 and L2 entries are set from the
// refcounts, and an image found clean has its dirty and corrupt bits cleared.
//
// # Write ordering
//
// The repair is worked out on changes staged in memory (repair_stage.go) and
// applied only if nothing was refused, in this order. Every write leaves an
// image that reads as before, so a crash at any write leaves one that a
// second repair completes:
//
//  1. a refcount block past the end of the file: the file is extended (the
//     block read as zeros before and does after);
//  2. a rebuild: the new refcount blocks and table go into clusters nothing
//     references, then fdatasync, then the header's refcount table fields,
//     then fdatasync; the old structure stays valid until the switch;
//  3. refcount changes: freed clusters (nothing references them) are punched
//     first, then the refcount blocks are written, then fdatasync;
//  4. COPIED flags: L1 pieces and L2 tables, then fdatasync (the flag does not
//     change what a read returns);
//  5. the header cluster, when the dirty or corrupt bit is cleared, then
//     fdatasync.
//
// The bytes written are the bytes qemu writes: the same refcounts, the same
// placement of a rebuilt structure, freed clusters discarded (qemu discards
// with QCOW2_DISCARD_ALWAYS), the same header.

import (
	"encoding/binary"
	"slices"

	"instarfs/errcode"
)

// RepairMode is what Repair fixes (qemu's BdrvCheckMode).
type RepairMode uint8

const (
	// RepairLeaks frees leaked clusters (-r leaks).
	RepairLeaks RepairMode = 1 << iota
	// RepairErrors fixes refcount errors and the corruptions qemu repairs.
	RepairErrors
	// RepairAll is -r all.
	RepairAll = RepairLeaks | RepairErrors
)

// RepairFile is the image file Repair changes.
type RepairFile interface {
	File
	Truncate(size int64) error
	// PunchHole deallocates [off, off+n) of the file, keeping its size.
	PunchHole(off, n int64) error
}

// RepairReport is the outcome of Repair, in the shape of qemu-img's output.
type RepairReport struct {
	// Pass is the repairing check: its messages (stderr) and its counters
	// after the repairs.
	Pass *CheckReport
	// LeaksFixed and CorruptionsFixed are what qemu-img prints under "The
	// following inconsistencies were found and repaired:".
	LeaksFixed, CorruptionsFixed int64
	// Final is the second, read-only check ("Double checking the fixed image
	// now..."), run when something was fixed; nil otherwise, and then Pass is
	// the report qemu-img prints.
	Final *CheckReport
	// NeedsRebuild is set when -r leaks found that the refcount structure
	// must be rebuilt: qemu-img fails ("Check failed: Input/output error")
	// without writing anything.
	NeedsRebuild bool
}

// Repair runs `qemu-img check -r` on the qcow2 image in f, fileSize bytes
// long, with mode RepairLeaks or RepairAll.
//
// Images whose repair qemu does differently from a refcount repair (a
// snapshot table with incomplete entries, unaligned L2 tables or data
// clusters, persistent bitmaps, which qemu rewrites when it opens an image
// read-write), and images whose repair would change what they read (a
// reference the check cannot count, so that a freed or rebuilt cluster could
// be in use; a table write onto data or other metadata), are refused with
// REPAIR_UNSUPPORTED; so is everything Check refuses. A refused repair
// writes nothing: the changes are staged in memory and applied only once the
// whole repair has been worked out.
func Repair(f RepairFile, fileSize int64, mode RepairMode) (*RepairReport, error) {
	if mode&RepairLeaks == 0 || mode&^RepairAll != 0 {
		return nil, errcode.New(errcode.BadArguments, "qcow2 repair: mode must be leaks or all")
	}
	// The repair is worked out on a staged copy of the changes; it is
	// applied only when nothing was refused.
	staged := newStagedFile(f, fileSize)
	c, err := newRefChecker(staged, fileSize)
	if err != nil {
		return nil, err
	}
	c.fix, c.w = mode, staged
	err = c.repair()
	if c.refused != "" {
		return nil, errcode.New(errcode.RepairUnsupported, "qcow2 repair: refusing to repair this image: %s", c.refused)
	}
	if err != nil {
		return nil, err
	}
	if err := staged.apply(); err != nil {
		return nil, err
	}
	rep := &RepairReport{Pass: c.rep, LeaksFixed: c.fixed.leaks, CorruptionsFixed: c.fixed.corruptions, NeedsRebuild: c.needsRebuild}
	if rep.LeaksFixed > 0 || rep.CorruptionsFixed > 0 {
		if rep.Final, err = Check(f, staged.size); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// markData records, when repairing, that [off, off+size) holds guest data
// (within the clusters the check covers: inc refuses, and Repair then
// refuses, references further out).
func (c *refChecker) markData(off, size uint64) {
	if c.w == nil || size == 0 {
		return
	}
	last := min(int64((off+size-1)>>c.cbits), c.nb-1)
	for k := int64(off >> c.cbits); k <= last; k++ {
		c.data.set(k, 1)
	}
}

// refuse records why Repair must not write to this image (the first reason).
func (c *refChecker) refuse(why string) {
	if c.refused == "" {
		c.refused = why
	}
}

// repair is qcow2_check_refcounts with a fix mode, then qemu's marking of the
// image as clean.
func (c *refChecker) repair() error {
	if err := c.load(); err != nil {
		return err
	}
	if err := c.calculate(); err != nil {
		return err
	}
	pre := *c.rep
	fix := c.fix
	c.fix = 0
	highest, err := c.compare()
	c.fix = fix
	if err != nil {
		return err
	}

	switch {
	case c.rebuild && c.fix&RepairErrors != 0:
		if highest, err = c.rebuildAndRecheck(); err != nil {
			return err
		}
	case c.rebuild:
		c.msg(MsgCheckError, "ERROR need to rebuild refcount structures")
		c.rep.CheckErrors++
		c.needsRebuild = true
		return c.markClean(false)
	case c.rep.Leaks > 0 || c.rep.Corruptions > 0:
		// Compare again, repairing; the first comparison's counts are
		// dropped, its messages stay (qemu printed them).
		msgs, omitted := c.rep.Messages, c.rep.MessagesOmitted
		*c.rep = pre
		c.rep.Messages, c.rep.MessagesOmitted = msgs, omitted
		if highest, err = c.compare(); err != nil {
			return err
		}
		if err := c.flushRefcounts(); err != nil {
			return err
		}
	}

	if err := c.checkCopied(); err != nil {
		return err
	}
	if err := c.sync(); err != nil {
		return err
	}
	c.rep.ImageEndOffset = (highest + 1) * c.cs
	return c.markClean(c.rep.CheckErrors == 0 && c.rep.Corruptions == 0)
}

// rebuildAndRecheck rebuilds the refcount structure, computes the references
// again and frees what the old structure leaves leaked, accounting as qemu
// does. It returns the highest cluster in use.
func (c *refChecker) rebuildAndRecheck() (int64, error) {
	old := *c.rep
	c.msg(MsgInfo, "Rebuilding refcount structure")
	if err := c.rebuildRefcounts(); err != nil {
		return 0, err
	}
	c.rep.Corruptions, c.rep.Leaks = 0, 0
	c.rebuild = false
	if err := c.load(); err != nil {
		return 0, err
	}
	fix := c.fix
	c.fix = 0
	if err := c.calculate(); err != nil {
		return 0, err
	}
	c.fix = fix

	// The leak repair's counts are dropped, except leaks it could not fix.
	saved := *c.rep
	c.rep.Corruptions, c.rep.Leaks, c.rep.CheckErrors = 0, 0, 0
	fixedBefore := c.fixed
	c.fix = RepairLeaks
	highest, err := c.compare()
	c.fix = fix
	if err != nil {
		return 0, err
	}
	if c.rebuild {
		c.msg(MsgInfo, "ERROR rebuilt refcount structure is still broken")
	}
	if err := c.flushRefcounts(); err != nil {
		return 0, err
	}
	fresh := c.rep.Leaks
	c.fixed = fixedBefore
	saved.Messages, saved.MessagesOmitted, saved.LeakedClusters = c.rep.Messages, c.rep.MessagesOmitted, c.rep.LeakedClusters
	*c.rep = saved
	if c.rep.Corruptions < old.Corruptions {
		c.fixed.corruptions += old.Corruptions - c.rep.Corruptions
	}
	if c.rep.Leaks < old.Leaks {
		c.fixed.leaks += old.Leaks - c.rep.Leaks
	}
	c.rep.Leaks += fresh
	return highest, nil
}

// setStored changes the stored refcount of cluster k, in block b, to v in
// memory; flushRefcounts writes it.
func (c *refChecker) setStored(b *RefcountBlock, k int64, v uint64) {
	if c.changed == nil {
		c.changed = map[uint64]*RefcountBlock{}
	}
	nb := c.changed[uint64(b.Offset)]
	if nb == nil {
		nb = NewRefcountBlock(b.Offset, slices.Clone(b.Bytes()), c.h.RefcountOrder)
		c.changed[uint64(b.Offset)] = nb
	}
	setRefcount(nb.data, c.h.RefcountOrder, k&(1<<c.rbBits-1), v)
	if v == 0 {
		c.freed = append(c.freed, k)
	}
}

// flushRefcounts discards the freed clusters, then writes the changed
// refcount blocks and makes them durable.
func (c *refChecker) flushRefcounts() error {
	slices.Sort(c.freed)
	for i := 0; i < len(c.freed); {
		j := i + 1
		for j < len(c.freed) && c.freed[j] == c.freed[j-1]+1 {
			j++
		}
		if err := c.w.PunchHole(c.freed[i]<<c.cbits, int64(j-i)<<c.cbits); err != nil {
			return errcode.New(errcode.WriteFailed, "qcow2 repair: discarding clusters at %#x: %v", c.freed[i]<<c.cbits, err)
		}
		i = j
	}
	c.freed = nil
	offs := make([]uint64, 0, len(c.changed))
	for off := range c.changed {
		offs = append(offs, off)
	}
	slices.Sort(offs)
	for _, off := range offs {
		if err := c.write(c.changed[off].data, int64(off)); err != nil {
			return err
		}
	}
	if len(offs) > 0 {
		if err := c.sync(); err != nil {
			return err
		}
	}
	// The blocks as written are what later reads see.
	for _, off := range offs {
		c.rb.forget(off)
	}
	clear(c.changed)
	return nil
}

// fixL1Copied sets or clears the COPIED flag of active L1 entry idx, whose
// chunk of the table (starting at entry base) is in b, and writes the
// 512-byte piece of the table that holds it, as qcow2_write_l1_entry does.
func (c *refChecker) fixL1Copied(b []byte, base, idx, e uint64, copied bool) error {
	if copied {
		e |= OflagCopied
	} else {
		e &^= OflagCopied
	}
	binary.BigEndian.PutUint64(b[8*(idx-base):], e)
	const perSector = 64
	start := idx &^ (perSector - 1)
	n := min(uint64(perSector), uint64(c.h.L1Size)-start)
	if err := c.overlapCheck(c.h.L1TableOffset+8*start, 8*n, true); err != nil {
		return err
	}
	if err := c.write(b[8*(start-base):8*(start-base+n)], int64(c.h.L1TableOffset+8*start)); err != nil {
		return err
	}
	c.rep.Corruptions--
	c.fixed.corruptions++
	return nil
}

// fixL2Copied writes the L2 table in c.buf, at off, whose COPIED flags were
// repaired in dirty entries.
func (c *refChecker) fixL2Copied(off uint64, dirty int64) error {
	if err := c.overlapCheck(off, uint64(c.cs), false); err != nil {
		return err
	}
	if err := c.write(c.buf, int64(off)); err != nil {
		return err
	}
	c.rep.Corruptions -= dirty
	c.fixed.corruptions += dirty
	return nil
}

// overlapCheck refuses a write of a table to [off, off+size) that would land
// on other metadata, as qemu's overlap check (its default "cached" set)
// refuses it: the header, the active L1 table (unless activeL1, the table
// being written), the refcount table and blocks, the snapshot table and the
// snapshots' L1 tables. qemu then marks the image corrupt and fails; the
// repair stops with REPAIR_UNSUPPORTED, the image as consistent as before.
func (c *refChecker) overlapCheck(off, size uint64, activeL1 bool) error {
	lo := off &^ uint64(c.cs-1)
	hi := (off + size + uint64(c.cs) - 1) &^ uint64(c.cs-1)
	meets := func(a, n uint64) bool { return n > 0 && a < hi && lo < a+n }
	what := ""
	for k := int64(lo >> c.cbits); k < int64(hi>>c.cbits); k++ {
		if c.data.get(k) != 0 {
			what = "guest data"
		}
	}
	switch {
	case what != "":
	case off < uint64(c.cs):
		what = "the header"
	case !activeL1 && meets(c.h.L1TableOffset, uint64(c.h.L1Size)*8):
		what = "the active L1 table"
	case meets(c.h.RefcountTableOffset, uint64(len(c.reftable))*8):
		what = "the refcount table"
	case meets(c.h.SnapshotsOffset, uint64(c.snapsSize)):
		what = "the snapshot table"
	}
	for _, s := range c.snaps {
		if what == "" && meets(s.l1Offset, uint64(s.l1Size)*8) {
			what = "a snapshot's L1 table"
		}
	}
	for _, e := range c.reftable {
		if b := e & RefcountTableOffsetMask; what == "" && b != 0 && meets(b, uint64(c.cs)) {
			what = "a refcount block"
		}
	}
	if what != "" {
		return errcode.New(errcode.RepairUnsupported, "qcow2 repair: refusing to write the table at %#x: it overlaps %s (qemu marks the image corrupt)", off, what)
	}
	return nil
}

// markClean clears the dirty bit, and the corrupt bit when consistent is
// set: qemu clears the dirty bit whenever it closes an image it opened
// read-write (qcow2_mark_clean), and the corrupt bit when the repair left no
// errors (qcow2_mark_consistent). The header cluster is rewritten as qemu's
// qcow2_update_header writes it.
func (c *refChecker) markClean(consistent bool) error {
	bits := IncompatDirty
	if consistent {
		bits |= IncompatCorrupt
	}
	if c.h.IncompatibleFeatures&bits == 0 {
		return nil
	}
	if c.data.get(0) != 0 {
		c.refuse("the header cluster holds guest data")
		return nil
	}
	h := c.h.clone()
	h.IncompatibleFeatures &^= bits
	buf, err := h.EncodeCluster0()
	if err != nil {
		return err
	}
	if err := c.write(buf, 0); err != nil {
		return err
	}
	c.h = h
	return c.sync()
}

// extend makes the file end with the cluster at off when it is shorter
// (check_refblocks' repair of a refcount block past the end of the file).
// off is a refcount table entry's, which may lie anywhere below 2^64.
func (c *refChecker) extend(off uint64) error {
	if nb := off>>c.cbits + 1; nb > maxCheckClusters {
		return errcode.New(errcode.ImageTooLarge, "qcow2 repair: extending the file to the refcount block at %#x would make it %d clusters, more than qemu checks (%d)", off, nb, maxCheckClusters)
	}
	size := int64(off) + c.cs
	if size <= c.fileSize {
		return nil
	}
	if err := c.w.Truncate(size); err != nil {
		return errcode.New(errcode.WriteFailed, "qcow2 repair: extending the file to %d bytes: %v", size, err)
	}
	c.fileSize = size
	c.nb = checkDivUp(size, c.cs)
	return nil
}

func (c *refChecker) write(p []byte, off int64) error {
	if _, err := c.w.WriteAt(p, off); err != nil {
		return errcode.New(errcode.WriteFailed, "qcow2 repair: write of %d bytes at %#x: %v", len(p), off, err)
	}
	if end := off + int64(len(p)); end > c.fileSize {
		c.fileSize = end
	}
	return nil
}

func (c *refChecker) sync() error {
	if err := c.w.Datasync(); err != nil {
		return errcode.New(errcode.WriteFailed, "qcow2 repair: fdatasync: %v", err)
	}
	return nil
}

// rebuildRefcounts is qemu's rebuild_refcount_structure: new refcount blocks
// for every block of clusters in use, and a new refcount table, placed with
// the in-memory refcounts (which they are added to), written, and switched to
// in the header. The old structure is left leaked.
func (c *refChecker) rebuildRefcounts() error {
	var table []uint64
	if _, err := c.placeRefblocks(0, c.nb, &table); err != nil {
		return err
	}
	var tableOff, tableClusters int64
	for {
		tableClusters = checkDivUp(int64(len(table))*8, c.cs)
		if int64(len(table))*8 > MaxRefcountTableBytes {
			return errcode.New(errcode.ImageTooLarge, "qcow2 repair: the rebuilt refcount table would exceed %d bytes", MaxRefcountTableBytes)
		}
		first := int64(0)
		tableOff = c.allocIMRT(tableClusters, &first)
		start := tableOff >> c.cbits
		grown, err := c.placeRefblocks(start, start+tableClusters, &table)
		if err != nil {
			return err
		}
		if !grown {
			break
		}
	}

	// qemu refuses to write over a refcount block its table names, even one
	// the check skipped (reserved bits set): it marks the image corrupt and
	// fails. Refuse before writing anything.
	for _, e := range c.reftable {
		off := int64(e & RefcountTableOffsetMask)
		if e&^RefcountTableOffsetMask == 0 || off == 0 {
			continue
		}
		if c.rebuildOverlaps(table, tableOff, tableClusters, off) {
			return errcode.New(errcode.RepairUnsupported, "qcow2 repair: refusing to rebuild the refcount structure: qemu would write over the refcount block at %#x that the damaged refcount table names", off)
		}
	}

	// Write the blocks and the table into clusters nothing references, make
	// them durable, then switch the header to them.
	per := int64(1) << c.rbBits
	block := make([]byte, c.cs)
	for ri, off := range table {
		if off == 0 {
			continue
		}
		clear(block)
		for j := range per {
			if v := c.imrt.get(int64(ri)*per + j); v != 0 {
				setRefcount(block, c.h.RefcountOrder, j, v)
			}
		}
		if err := c.write(block, int64(off)); err != nil {
			return err
		}
	}
	raw := make([]byte, len(table)*8)
	for i, v := range table {
		binary.BigEndian.PutUint64(raw[8*i:], v)
	}
	if err := c.write(raw, tableOff); err != nil {
		return err
	}
	if err := c.sync(); err != nil {
		return err
	}
	var hdr [12]byte
	binary.BigEndian.PutUint64(hdr[0:], uint64(tableOff))
	binary.BigEndian.PutUint32(hdr[8:], uint32(tableClusters))
	if err := c.write(hdr[:], 48); err != nil {
		return err
	}
	if err := c.sync(); err != nil {
		return err
	}
	c.h.RefcountTableOffset = uint64(tableOff)
	c.h.RefcountTableClusters = uint32(tableClusters)
	c.rb = refblockCache{}
	c.changed = nil
	return nil
}

// rebuildOverlaps reports whether the cluster range holding [off, off+cs)
// meets a refcount block of table or the table itself.
func (c *refChecker) rebuildOverlaps(table []uint64, tableOff, tableClusters, off int64) bool {
	lo := off &^ (c.cs - 1)
	hi := (off + c.cs + c.cs - 1) &^ (c.cs - 1)
	meets := func(a, n int64) bool { return a < hi && lo < a+n }
	for _, b := range table {
		if b != 0 && meets(int64(b), c.cs) {
			return true
		}
	}
	return meets(tableOff, tableClusters*c.cs)
}

// placeRefblocks is the allocation half of qemu's
// rebuild_refcounts_write_refblocks: for every block of clusters in
// [first, end) that has a cluster in use and no refcount block in *table yet,
// a cluster for its refcount block is allocated in the in-memory refcounts
// and entered in *table, which grows (in whole clusters) as needed. It reports
// whether the table grew.
func (c *refChecker) placeRefblocks(first, end int64, table *[]uint64) (bool, error) {
	per := int64(1) << c.rbBits
	free := int64(0)
	grown := false
	for k := first; ; k++ {
		if k = c.imrt.nextNonZero(k, end); k >= end {
			break
		}
		ri := k >> c.rbBits
		rs := ri << c.rbBits
		if ri >= int64(len(*table)) || (*table)[ri] == 0 {
			free = max(free, rs)
			off := c.allocIMRT(1, &free)
			if off>>c.cbits >= end {
				end = off>>c.cbits + 1
			}
			if ri >= int64(len(*table)) {
				n := checkDivUp((ri+1)*8, c.cs) * c.cs / 8
				*table = append(*table, make([]uint64, n-int64(len(*table)))...)
				grown = true
			}
			(*table)[ri] = uint64(off)
		}
		k = rs + per - 1
	}
	return grown, nil
}

// allocIMRT is qemu's alloc_clusters_imrt: the first run of n clusters free
// in the in-memory refcounts at or after *first (growing them at the end of
// the image when there is none), marked in use; *first moves to the first
// free cluster seen.
func (c *refChecker) allocIMRT(n int64, first *int64) int64 {
	k := *first
	run := int64(0)
	firstGap := true
	for ; k < c.nb && run < n; k++ {
		if c.imrt.get(k) == 0 {
			run++
			if firstGap {
				*first = k
				firstGap = false
			}
		} else {
			run = 0
		}
	}
	if run < n {
		c.nb = max(c.nb, k+n-run)
	}
	k -= run
	for i := range n {
		c.imrt.set(k+i, 1)
	}
	return k << c.cbits
}
