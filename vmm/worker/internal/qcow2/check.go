package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/scratch"
)

// This file is the consistency check, `qemu-img check`. Without a fix mode
// (Check) it only reads; repair.go drives the same walk with one (Repair).
//
// It follows qemu 7.2 (block/qcow2-refcount.c, qcow2-snapshot.c,
// qcow2-bitmap.c): an in-memory refcount is computed for every host cluster
// from every reference in the image and compared with the stored refcounts,
// then the COPIED flags of the active L1 and L2 entries are compared with the
// stored refcounts. Tables are read where they claim to be; like qemu, bytes
// past the end of the file read as zeros, and unaligned L2 tables are read at
// their unaligned offset.

// MessageKind classifies a CheckMessage.
type MessageKind uint8

const (
	// MsgCorruption is a message that counted a corruption.
	MsgCorruption MessageKind = iota
	// MsgLeak is a message that counted a leaked cluster.
	MsgLeak
	// MsgCheckError is a message that counted a check error.
	MsgCheckError
	// MsgInfo is a message that counted nothing (for example qemu's
	// "qcow2: Image is corrupt: ..." notice or the hint after a refcount
	// overflow).
	MsgInfo
)

func (k MessageKind) String() string {
	switch k {
	case MsgCorruption:
		return "corruption"
	case MsgLeak:
		return "leak"
	case MsgCheckError:
		return "check-error"
	}
	return "info"
}

// CheckMessage is one line that qemu-img check prints on stderr while it
// opens and checks the image, without the trailing newline and without the
// "qemu-img: " program prefix of qemu's warnings.
type CheckMessage struct {
	Kind MessageKind
	Text string
}

// MaxCheckMessages bounds CheckReport.Messages; further messages are counted
// in MessagesOmitted. The counters are exact whatever the number of messages.
const MaxCheckMessages = 10000

// CheckReport is the result of Check: the counters of `qemu-img check` and the
// messages it prints.
//
// Rendering as `qemu-img check --output=json` (7.2): the object has
// "filename" and "format" (added by the caller), "check-errors" always, and
// each of "image-end-offset", "corruptions", "leaks", "corruptions-fixed",
// "leaks-fixed", "total-clusters", "allocated-clusters",
// "fragmented-clusters" and "compressed-clusters" only when it is non-zero
// (the *-fixed ones are always 0 here: Check never repairs). qemu's key order
// is not stable, so compare the decoded object.
//
// Rendering as human output (stdout), in this order:
//
//	if Corruptions, Leaks and CheckErrors are all 0:
//	    "No errors were found on the image.\n"
//	else:
//	    Corruptions > 0: "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n"
//	    Leaks > 0:       "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n"
//	    CheckErrors > 0: "\n%d internal errors have occurred during the check.\n"
//	TotalClusters != 0 && AllocatedClusters != 0:
//	    "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n"
//	    with allocated*100/total, fragmented*100/allocated, compressed*100/allocated
//	ImageEndOffset != 0:
//	    "Image end offset: %d\n"
//
// The Messages go to stderr, before the output. When CheckErrors > 0 qemu-img
// prints the output, then "qemu-img: Check failed" on stderr, and exits 1;
// ExitCode gives the exit status.
type CheckReport struct {
	Corruptions int64
	Leaks       int64
	CheckErrors int64
	// ImageEndOffset is the end of the highest cluster that has a stored or a
	// computed refcount (qemu's highest_cluster + 1, times the cluster size).
	ImageEndOffset int64
	// TotalClusters is the virtual size (rounded down to 512 bytes) in
	// clusters, rounded up.
	TotalClusters int64
	// AllocatedClusters counts the active L2 entries with a host cluster:
	// normal, zero with a preallocated cluster, and compressed.
	AllocatedClusters int64
	// FragmentedClusters counts, within each active L2 table, the normal and
	// preallocated-zero entries whose host offset does not follow the previous
	// such entry's cluster (the first one of a table never counts), plus every
	// compressed entry.
	FragmentedClusters int64
	// CompressedClusters counts the active compressed L2 entries.
	CompressedClusters int64

	// LeakedClusters lists the leaked clusters, for the writer to reclaim:
	// those Leaks counts, then the clusters past the end of the file that
	// have a refcount but no reference (which qemu-img check does not
	// report). At most MaxLeakRecords are listed.
	LeakedClusters []Leak

	// Messages are the lines qemu prints on stderr, in its order.
	Messages        []CheckMessage
	MessagesOmitted int64
}

// Leak is a cluster whose stored refcount is larger than the number of
// references to it.
type Leak struct {
	Cluster            int64 // cluster index
	Stored, Referenced uint64
}

// MaxLeakRecords bounds CheckReport.LeakedClusters.
const MaxLeakRecords = 1 << 20

// ExitCode is the exit status of `qemu-img check` for this report: 1 when
// check errors occurred, 2 when the image is corrupt, 3 when it only leaks
// clusters, 0 when it is clean. (Check's error return corresponds to exit
// status 1 with no report.)
func (r *CheckReport) ExitCode() int {
	switch {
	case r.CheckErrors > 0:
		return 1
	case r.Corruptions > 0:
		return 2
	case r.Leaks > 0:
		return 3
	}
	return 0
}

// MaxCheckWork bounds the number of table entries (L1, L2 and bitmap table
// entries, counted each time a table is walked) that one Check examines. A
// hostile image can make qemu walk the same tables billions of times (an L1
// table whose entries all name one L2 table, snapshots sharing one L1
// table); Check fails with IMAGE_TOO_LARGE instead. Real images stay far
// below it: each walk of an L1 table costs about virtual size / cluster size.
var MaxCheckWork int64 = 1 << 31

// Limits qemu applies during the check.
const (
	maxCheckClusters = math.MaxInt32 // qemu fails with EFBIG beyond INT_MAX clusters
	bmeMaxTableSize  = 0x8000000
	bmeMaxPhysSize   = 0x20000000
	bmeMaxName       = 1023
)

// Check runs the read-only consistency check of `qemu-img check` on the
// qcow2 image r, whose file is fileSize bytes long, and returns its counters
// and messages.
//
// An error means qemu-img would have failed before reporting anything (exit
// status 1): the header cannot be parsed (qemu cannot open the image), the
// snapshot table or the bitmap directory cannot be read, the file has more
// clusters than qemu can check, a read failed, or the image would take more
// than MaxCheckWork table entries to check.
//
// Differences from qemu-img, on purpose: the header goes through ParseHeader,
// so an image that qemu opens but ParseHeader refuses (external data file,
// encryption, refcount_table_clusters 0, an active L1 or refcount table at
// offset 0, ...) gives an error where qemu may count corruptions; MaxCheckWork
// bounds the work; and the backing file, which qemu-img check opens too (and
// fails without), is not looked at.
//
// Memory use is about 2 bytes per host cluster of the file (allocated lazily
// for the regions the image references), plus one cluster of buffers per
// table walked at a time.
func Check(r io.ReaderAt, fileSize int64) (*CheckReport, error) {
	c, err := newRefChecker(r, fileSize)
	if err != nil {
		return nil, err
	}
	if err := c.run(); err != nil {
		return nil, err
	}
	return c.rep, nil
}

func newRefChecker(r io.ReaderAt, fileSize int64) (*refChecker, error) {
	h, err := checkModeHeader(r, fileSize)
	if err != nil {
		return nil, err
	}
	return &refChecker{
		r:        r,
		fileSize: fileSize,
		h:        h,
		cs:       h.ClusterSize(),
		cbits:    uint(h.ClusterBits),
		entSize:  int64(h.L2EntrySize()),
		extL2:    h.ExtendedL2(),
		rep:      &CheckReport{},
		work:     MaxCheckWork,
	}, nil
}

// checkModeHeader parses the header the way qemu opens an image for checking:
// tables may lie past the end of the file (they read as zeros there).
func checkModeHeader(r io.ReaderAt, fileSize int64) (*Header, error) {
	return readHeader(r, fileSize, -1)
}

type refChecker struct {
	r        io.ReaderAt
	fileSize int64
	h        *Header
	cs       int64
	cbits    uint
	entSize  int64 // L2 entry size
	extL2    bool
	rep      *CheckReport
	work     int64

	imrt     checkCounts
	nb       int64 // clusters covered by imrt (file clusters, grown by references just past EOF)
	reftable []uint64
	rbBits   uint // log2 of refcounts per refcount block

	snaps     []checkSnapshot
	snapsSize int64
	signaled  bool // qemu's signaled_corruption

	buf   []byte // one cluster, for L2 tables
	l1buf []byte
	rb    refblockCache

	// Repair state (repair.go); zero for the read-only check.
	fix          RepairMode
	rebuild      bool                      // the refcount structure must be rebuilt
	fixed        fixCounts                 // qemu's leaks_fixed, corruptions_fixed
	changed      map[uint64]*RefcountBlock // refcount blocks changed in memory, by offset
	freed        []int64                   // clusters whose refcount a repair lowered to 0
	refused      string                    // why Repair must refuse this image, when set
	needsRebuild bool                      // -r leaks met a structure only -r all can repair
	w            RepairFile                // the file Repair writes
	data         checkCounts               // Repair: 1 for the clusters guest data lives in
}

// fixCounts are the repairs made.
type fixCounts struct {
	leaks, corruptions int64
}

type checkSnapshot struct {
	l1Offset  uint64
	l1Size    uint32
	extraSize uint32
	id, name  string
}

func (c *refChecker) msg(kind MessageKind, format string, args ...any) {
	if len(c.rep.Messages) >= MaxCheckMessages {
		c.rep.MessagesOmitted++
		return
	}
	c.rep.Messages = append(c.rep.Messages, CheckMessage{Kind: kind, Text: fmt.Sprintf(format, args...)})
}

func (c *refChecker) corruption(format string, args ...any) {
	c.rep.Corruptions++
	c.msg(MsgCorruption, format, args...)
}

// spend accounts for n table entries examined.
func (c *refChecker) spend(n int64) error {
	c.work -= n
	if c.work < 0 {
		return tooMuchWork()
	}
	return nil
}

func tooMuchWork() error {
	return errcode.New(errcode.ImageTooLarge, "qcow2 check: the image's tables would take more than %d entries to walk", MaxCheckWork)
}

// readZ reads len(p) bytes at off; bytes past the end of the file read as
// zeros, as they do for qemu.
func (c *refChecker) readZ(p []byte, off uint64) error {
	if off >= uint64(c.fileSize) {
		clear(p)
		return nil
	}
	n := min(uint64(len(p)), uint64(c.fileSize)-off)
	if err := readFull(c.r, p[:n], int64(off)); err != nil {
		return err
	}
	clear(p[n:])
	return nil
}

func (c *refChecker) run() error {
	if err := c.load(); err != nil {
		return err
	}
	if err := c.calculate(); err != nil {
		return err
	}
	highest, err := c.compare()
	if err != nil {
		return err
	}
	if err := c.pastEOF(); err != nil {
		return err
	}
	if err := c.checkCopied(); err != nil {
		return err
	}
	c.rep.ImageEndOffset = (highest + 1) * c.cs
	return nil
}

// load reads what qemu reads when it opens the image: the snapshot table and
// the refcount table.
func (c *refChecker) load() error {
	h := c.h
	nb := checkDivUp(c.fileSize, c.cs)
	if nb > maxCheckClusters {
		return errcode.New(errcode.ImageTooLarge, "qcow2 check: the file has %d clusters, more than qemu checks (%d)", nb, maxCheckClusters)
	}
	c.nb = nb
	c.imrt.init(nb + 1)
	c.rbBits = c.cbits + 3 - uint(h.RefcountOrder)
	c.buf = make([]byte, c.cs)

	// qemu's bs->total_sectors is the virtual size in whole 512-byte sectors.
	c.rep.TotalClusters = checkDivUp(int64(h.Size/512*512), c.cs)

	if err := c.readSnapshotTable(); err != nil {
		return err
	}

	// The refcount table, as qemu loads it on open.
	rtEntries := int64(h.RefcountTableClusters) << (c.cbits - 3)
	c.reftable = make([]uint64, rtEntries)
	if rtEntries > 0 {
		raw := scratch.Get(int(rtEntries * 8))
		defer scratch.Put(raw)
		if err := c.readZ(raw, h.RefcountTableOffset); err != nil {
			return err
		}
		for i := range c.reftable {
			c.reftable[i] = be64(raw[8*i:])
		}
	}
	return nil
}

// readSnapshotTable follows qcow2_check_read_snapshot_table without repair.
func (c *refChecker) readSnapshotTable() error {
	h := c.h
	const maxSnaps = MaxSnapshots
	nbs := uint64(h.NbSnapshots)
	off := h.SnapshotsOffset
	if nbs > maxSnaps {
		return errcode.New(errcode.Qcow2Corrupt, "qcow2 check: snapshot table too large (%d snapshots, more than %d)", nbs, maxSnaps)
	}
	if math.MaxInt64-nbs*snapshotFixedSize < off || off&uint64(c.cs-1) != 0 {
		return errcode.New(errcode.Qcow2Corrupt, "qcow2 check: snapshot table offset %#x invalid", off)
	}
	if nbs == 0 {
		return nil
	}
	c.snaps = make([]checkSnapshot, 0, min(nbs, 1024))
	var tableLen uint64
	pos := off
	var fixed [snapshotFixedSize]byte
	for i := uint64(0); i < nbs; i++ {
		tableLen = (tableLen + 7) &^ 7
		pos = (pos + 7) &^ 7
		if err := c.readZ(fixed[:], pos); err != nil {
			return err
		}
		pos += snapshotFixedSize
		s := checkSnapshot{
			l1Offset:  be64(fixed[0:]),
			l1Size:    be32(fixed[8:]),
			extraSize: be32(fixed[36:]),
		}
		idLen := uint64(be16(fixed[12:]))
		nameLen := uint64(be16(fixed[14:]))
		if s.extraSize > MaxSnapshotExtraData {
			return errcode.New(errcode.Qcow2Corrupt, "qcow2 check: failed to read the snapshot table: too much extra metadata in snapshot table entry %d", i)
		}
		pos += uint64(s.extraSize)
		str := make([]byte, idLen+nameLen)
		if err := c.readZ(str, pos); err != nil {
			return err
		}
		pos += idLen + nameLen
		s.id = checkCString(str[:idLen])
		s.name = checkCString(str[idLen:])
		tableLen += snapshotFixedSize + uint64(s.extraSize) + idLen + nameLen
		if tableLen > MaxSnapshotTableBytes || pos-off > math.MaxInt32 {
			return errcode.New(errcode.Qcow2Corrupt, "qcow2 check: failed to read the snapshot table: snapshot table is too big")
		}
		c.snaps = append(c.snaps, s)
	}
	c.snapsSize = int64(pos - off)
	if h.Version >= 3 {
		for i, s := range c.snaps {
			if s.extraSize < 16 {
				c.corruption("ERROR snapshot table entry %d is incomplete", i)
				c.refuse("its snapshot table has incomplete entries")
			}
		}
	}
	return nil
}

// checkCString is the C string in b: up to the first NUL.
func checkCString(b []byte) string {
	for i, x := range b {
		if x == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// calculate builds the in-memory refcounts (qemu's calculate_refcounts).
func (c *refChecker) calculate() error {
	if err := c.foresee(); err != nil {
		return err
	}
	h := c.h
	c.inc(0, uint64(c.cs))
	if err := c.walkL1(h.L1TableOffset, h.L1Size, true); err != nil {
		return err
	}
	for _, s := range c.snaps {
		if s.l1Offset&uint64(c.cs-1) != 0 {
			c.corruption("ERROR snapshot %s (%s) l1_offset=%s: L1 table is not cluster aligned; snapshot table entry corrupted", s.id, s.name, checkHexAlt(s.l1Offset))
			c.refuse("a snapshot's L1 table is not cluster aligned (its clusters cannot be counted)")
			continue
		}
		if s.l1Size > MaxL1Entries {
			c.corruption("ERROR snapshot %s (%s) l1_size=%s: L1 table is too large; snapshot table entry corrupted", s.id, s.name, checkHexAlt(uint64(s.l1Size)))
			c.refuse("a snapshot's L1 table is too large (its clusters cannot be counted)")
			continue
		}
		if err := c.walkL1(s.l1Offset, s.l1Size, false); err != nil {
			return err
		}
	}
	c.inc(h.SnapshotsOffset, uint64(c.snapsSize))
	c.inc(h.RefcountTableOffset, uint64(len(c.reftable))*8)
	if err := c.bitmaps(); err != nil {
		return err
	}
	return c.refblocks()
}

// inc counts one reference to every cluster of [off, off+size)
// (qcow2_inc_refcounts_imrt).
func (c *refChecker) inc(off, size uint64) {
	if size == 0 {
		return
	}
	// A refcount table entry's offset may lie just below 2^64, where the
	// end wraps: that region exceeds the end of the file too.
	end := off + size
	if end < off || end > uint64(c.fileSize) && end-uint64(c.fileSize) >= uint64(c.cs) {
		c.corruption("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x%x size 0x%x", off, size)
		c.refuse("a reference points past the end of the file (the clusters there could be reused while in use)")
		return
	}
	first := int64(off >> c.cbits)
	last := int64((end - 1) >> c.cbits)
	limit := c.refcountMax()
	for k := first; k <= last; k++ {
		if k >= c.nb {
			c.nb = k + 1
		}
		v := c.imrt.get(k)
		if v == limit {
			c.corruption("ERROR: overflow cluster offset=0x%x", uint64(k)<<c.cbits)
			c.msg(MsgInfo, "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing")
			continue
		}
		c.imrt.set(k, v+1)
	}
}

func (c *refChecker) refcountMax() uint64 {
	bits := uint(1) << c.h.RefcountOrder
	if bits == 64 {
		return math.MaxUint64
	}
	return 1<<bits - 1
}

// checkL1Chunk is the number of L1 entries read at a time.
const checkL1Chunk = 8192

// growL1Buf returns b or a larger buffer for reading an L1 table of n entries
// checkL1Chunk at a time.
func growL1Buf(b []byte, n uint32) []byte {
	if need := min(int(n), checkL1Chunk) * 8; len(b) < need {
		return make([]byte, need)
	}
	return b
}

// walkL1 is qemu's check_refcounts_l1: the L1 table at off with n entries,
// its L2 tables and their clusters. active selects the fragmentation
// statistics (only the active L1 table counts).
func (c *refChecker) walkL1(off uint64, n uint32, active bool) error {
	if n == 0 {
		return nil
	}
	c.inc(off, uint64(n)*8)
	return c.eachL1Chunk(off, n, true, func(b []byte) error {
		for j := 0; j < len(b); j += 8 {
			e := be64(b[j:])
			if e == 0 {
				continue
			}
			if e&L1ReservedMask != 0 {
				c.corruption("ERROR found L1 entry with reserved bits set: %x", e)
			}
			l2 := e & L1OffsetMask
			c.inc(l2, uint64(c.cs))
			if l2&uint64(c.cs-1) != 0 {
				c.corruption("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2)
				c.refuse("an L2 table is not cluster aligned")
			}
			if err := c.walkL2(l2, active); err != nil {
				return err
			}
		}
		return nil
	})
}

// eachL1Chunk reads the L1 table at off with n entries checkL1Chunk entries
// at a time, up to the end of the file (the rest reads as zeros, and walkL1
// has nothing to do there), and calls f with each chunk. With spend, each
// chunk's entries are spent before it is read.
func (c *refChecker) eachL1Chunk(off uint64, n uint32, spend bool, f func(b []byte) error) error {
	c.l1buf = growL1Buf(c.l1buf, n)
	for i := uint64(0); i < uint64(n); i += checkL1Chunk {
		pos := off + i*8
		if pos >= uint64(c.fileSize) {
			break
		}
		cnt := min(uint64(n)-i, checkL1Chunk)
		if spend {
			if err := c.spend(int64(cnt)); err != nil {
				return err
			}
		}
		b := c.l1buf[:cnt*8]
		if err := c.readZ(b, pos); err != nil {
			return err
		}
		if err := f(b); err != nil {
			return err
		}
	}
	return nil
}

// foresee fails at once, with the error calculate's walks would end in, when
// what they spend exceeds what is left of the budget: an L1 table whose
// entries all name one L2 table would otherwise take seconds of walking to
// get there. Those walks fail with nothing else but a read error, so the
// outcome is the same. It reads the L1 tables that calculate walks and
// spends nothing itself.
func (c *refChecker) foresee() error {
	cost, err := c.l1Cost(c.h.L1TableOffset, c.h.L1Size)
	for _, s := range c.snaps {
		if err != nil || cost > c.work {
			break
		}
		if s.l1Offset&uint64(c.cs-1) == 0 && s.l1Size <= MaxL1Entries {
			var k int64
			k, err = c.l1Cost(s.l1Offset, s.l1Size)
			cost += k
		}
	}
	if err != nil {
		return err
	}
	if cost > c.work {
		return tooMuchWork()
	}
	return nil
}

// l1Cost returns what walkL1 spends on the L1 table at off with n entries:
// its entries up to the end of the file, and a table's worth for each L2
// table they name.
func (c *refChecker) l1Cost(off uint64, n uint32) (int64, error) {
	perL2 := c.cs / c.entSize
	var cost int64
	err := c.eachL1Chunk(off, n, false, func(b []byte) error {
		cost += int64(len(b) / 8)
		for j := 0; j < len(b); j += 8 {
			if be64(b[j:]) != 0 {
				cost += perL2
			}
		}
		return nil
	})
	return cost, err
}

// walkL2 is qemu's check_refcounts_l2 for the L2 table at off (which may be
// unaligned: qemu reads it there).
func (c *refChecker) walkL2(off uint64, active bool) error {
	n := c.cs / c.entSize
	if err := c.spend(n); err != nil {
		return err
	}
	if err := c.readZ(c.buf, off); err != nil {
		return err
	}
	var next uint64 // next_contiguous_offset
	for i := int64(0); i < n; i++ {
		raw := be64(c.buf[i*c.entSize:])
		var bitmap uint64
		if c.extL2 {
			bitmap = be64(c.buf[i*c.entSize+8:])
		}
		if raw == 0 && bitmap == 0 {
			continue
		}
		if hoff := raw & L2OffsetMask; !c.extL2 && hoff != 0 && hoff&uint64(c.cs-1) == 0 &&
			raw&(OflagCompressed|OflagZero|L2ReservedMask) == 0 {
			// Most entries: an aligned data cluster, nothing to report.
			c.countCluster(hoff, active, &next)
			continue
		}
		e := c.h.DecodeL2Entry(raw, bitmap)
		if e.Type != ClusterCompressed && raw&L2ReservedMask != 0 {
			c.corruption("ERROR found l2 entry with reserved bits set: %x", raw)
		}
		switch e.Type {
		case ClusterCompressed:
			coff := uint64(e.HostOffset)
			if raw&OflagCopied != 0 {
				c.corruption("ERROR: coffset=0x%x: copied flag must never be set for compressed clusters", coff)
			}
			if bitmap != 0 {
				c.corruption("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x", i, raw&^OflagCopied)
				c.refuse("a compressed cluster has a subcluster bitmap (it cannot be counted)")
				continue
			}
			c.inc(coff, uint64(e.CompressedSize))
			c.markData(coff, uint64(e.CompressedSize))
			if active {
				c.rep.AllocatedClusters++
				c.rep.CompressedClusters++
				c.rep.FragmentedClusters++
			}
		case ClusterNormal, ClusterZeroAlloc:
			hoff := raw & L2OffsetMask
			if (bitmap>>32)&bitmap != 0 {
				c.corruption("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", hoff)
			}
			if hoff&uint64(c.cs-1) != 0 {
				var data bool
				if c.extL2 {
					data = bitmap&BitmapAllocMask != 0
				} else {
					data = raw&OflagZero == 0
				}
				if data {
					c.corruption("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", hoff)
				} else {
					c.corruption("ERROR offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", hoff)
				}
				c.refuse("a data cluster is not cluster aligned")
			}
			c.countCluster(hoff, active, &next)
		case ClusterUnallocated:
			if bitmap&BitmapAllocMask != 0 {
				c.corruption("ERROR: Unallocated cluster has non-zero subcluster allocation map")
			}
		}
	}
	return nil
}

// countCluster counts the reference of an L2 entry to the cluster at hoff
// (data or an allocated zero cluster) and, in the active L1 table, the
// allocation statistics; next is where a cluster that continues the
// previous one would lie.
func (c *refChecker) countCluster(hoff uint64, active bool, next *uint64) {
	if active {
		c.rep.AllocatedClusters++
		if *next != 0 && hoff != *next {
			c.rep.FragmentedClusters++
		}
		*next = hoff + uint64(c.cs)
	}
	c.inc(hoff, uint64(c.cs))
	c.markData(hoff, uint64(c.cs))
}

// refblocks is qemu's check_refblocks: every refcount table entry. With
// RepairErrors, a block past the end of the file is repaired by extending the
// file to hold it (it reads as zeros there anyway).
func (c *refChecker) refblocks() error {
	for i, e := range c.reftable {
		off := e & RefcountTableOffsetMask
		k := int64(off >> c.cbits)
		if e&^RefcountTableOffsetMask != 0 {
			c.corruption("ERROR refcount table entry %d has reserved bits set", i)
			c.rebuild = true
			continue
		}
		if off&uint64(c.cs-1) != 0 {
			c.corruption("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i)
			c.rebuild = true
			continue
		}
		if off>>c.cbits >= uint64(c.nb) {
			if c.fix&RepairErrors == 0 {
				c.corruption("ERROR refcount block %d is outside image", i)
				continue
			}
			c.msg(MsgInfo, "Repairing refcount block %d is outside image", i)
			if err := c.extend(off); err != nil {
				return err
			}
			c.fixed.corruptions++
			c.inc(off, uint64(c.cs))
			continue
		}
		if off == 0 {
			continue
		}
		c.inc(off, uint64(c.cs))
		if v := c.imrt.get(k); v != 1 {
			c.corruption("ERROR refcount block %d refcount=%d", i, v)
			c.rebuild = true
		}
	}
	return nil
}

// pastEOF records, in LeakedClusters only, the clusters past the end of the
// file that have a refcount but no reference. qemu-img check does not look
// there (it compares refcounts up to the end of the file), so they are not
// counted in Leaks; an interrupted allocation leaves them.
func (c *refChecker) pastEOF() error {
	per := int64(1) << c.rbBits
	for ti := c.nb >> c.rbBits; ti < int64(len(c.reftable)); ti++ {
		b, ok, err := c.refblock(uint64(ti))
		if err != nil {
			return err
		}
		if !ok || b == nil {
			continue
		}
		for i := b.nextNonZero(int(max(ti*per, c.nb) - ti*per)); i < b.Len(); i = b.nextNonZero(i + 1) {
			if len(c.rep.LeakedClusters) < MaxLeakRecords {
				c.rep.LeakedClusters = append(c.rep.LeakedClusters, Leak{Cluster: ti*per + int64(i), Stored: b.Get(i)})
			}
		}
	}
	return nil
}

// refblock returns the refcount block for refcount table index ti (nil when
// the entry is beyond the table or zero: all refcounts read as 0). ok is
// false when the block offset is unaligned, qemu's EIO; the first time, the
// corruption notice is recorded like qemu prints it.
func (c *refChecker) refblock(ti uint64) (b *RefcountBlock, ok bool, err error) {
	if ti >= uint64(len(c.reftable)) {
		return nil, true, nil
	}
	boff := c.reftable[ti] & RefcountTableOffsetMask
	if boff == 0 {
		return nil, true, nil
	}
	if boff&uint64(c.cs-1) != 0 {
		c.refuse("a refcount block is not cluster aligned (qemu marks the image corrupt)")
		if !c.signaled {
			c.signaled = true
			c.msg(MsgInfo, "qcow2: Image is corrupt: Refblock offset %s unaligned (reftable index: %s); further non-fatal corruption events will be suppressed", checkHexAlt(boff), checkHexAlt(ti))
		}
		return nil, false, nil
	}
	if b := c.changed[boff]; b != nil {
		return b, true, nil
	}
	b, err = c.rb.get(c, boff)
	if err != nil {
		return nil, false, err
	}
	return b, true, nil
}

// storedRefcount is qemu's qcow2_get_refcount for cluster k.
func (c *refChecker) storedRefcount(k uint64) (v uint64, ok bool, err error) {
	var m blockMemo
	return m.refcount(c, k)
}

// blockMemo keeps the refcount block of the last lookup, for a loop that
// reads many refcounts, mostly from one block, and changes none.
type blockMemo struct {
	ti    uint64
	b     *RefcountBlock
	ok    bool
	valid bool
}

// refcount is storedRefcount through m.
func (m *blockMemo) refcount(c *refChecker, k uint64) (v uint64, ok bool, err error) {
	if ti := k >> c.rbBits; !m.valid || ti != m.ti {
		b, ok, err := c.refblock(ti)
		if err != nil {
			return 0, false, err
		}
		*m = blockMemo{ti: ti, b: b, ok: ok, valid: true}
	}
	if m.b == nil {
		return 0, m.ok, nil
	}
	return m.b.Get(int(k & (1<<c.rbBits - 1))), true, nil
}

// compare is qemu's compare_refcounts; it returns the highest cluster with a
// stored or computed refcount. It sets c.rebuild when a referenced cluster
// has a stored refcount of 0. With c.fix it repairs what c.fix allows: leaks
// (RepairLeaks) and refcounts lower than the references (RepairErrors), in
// memory (see setStored).
func (c *refChecker) compare() (int64, error) {
	var highest int64
	per := int64(1) << c.rbBits
	for start := int64(0); start < c.nb; start += per {
		end := min(start+per, c.nb)
		b, ok, err := c.refblock(uint64(start) >> c.rbBits)
		if err != nil {
			return 0, err
		}
		for k := start; k < end; k++ {
			if ok && b == nil {
				// No refcount block: only clusters with references
				// differ from their stored 0. (A repair can make the
				// image billions of clusters long.)
				if k = c.imrt.nextNonZero(k, end); k == end {
					break
				}
			}
			if !ok {
				c.rep.CheckErrors++
				c.msg(MsgCheckError, "Can't get refcount for cluster %d: Input/output error", k)
				continue
			}
			var stored uint64
			if b != nil {
				stored = b.Get(int(k - start))
			}
			computed := c.imrt.get(k)
			if stored > 0 || computed > 0 {
				highest = k
			}
			if stored == computed {
				continue
			}
			if stored == 0 {
				c.rebuild = true
			} else if (stored > computed && c.fix&RepairLeaks != 0) || (stored < computed && c.fix&RepairErrors != 0) {
				c.msg(MsgInfo, "Repairing cluster %d refcount=%d reference=%d", k, stored, computed)
				if stored > computed {
					c.fixed.leaks++
				} else {
					c.fixed.corruptions++
				}
				c.setStored(b, k, computed)
				continue
			}
			if stored < computed {
				c.corruption("ERROR cluster %d refcount=%d reference=%d", k, stored, computed)
				continue
			}
			c.rep.Leaks++
			if len(c.rep.LeakedClusters) < MaxLeakRecords {
				c.rep.LeakedClusters = append(c.rep.LeakedClusters, Leak{Cluster: k, Stored: stored, Referenced: computed})
			}
			c.msg(MsgLeak, "Leaked cluster %d refcount=%d reference=%d", k, stored, computed)
		}
		if ok && b == nil && uint64(start)>>c.rbBits >= uint64(len(c.reftable)) {
			// Past the refcount table every block is missing: go on at
			// the next block with a reference.
			next := c.imrt.nextNonZero(end, c.nb)
			if next == c.nb {
				break
			}
			start = next&^(per-1) - per
		}
	}
	return highest, nil
}

// checkCopied is qemu's check_oflag_copied on the active L1 table. It
// repairs the flags (in memory, see repair.go) when c.fix has RepairErrors,
// or RepairLeaks on an image that is otherwise clean by now.
func (c *refChecker) checkCopied() error {
	h := c.h
	repair := c.fix&RepairErrors != 0 ||
		(c.fix&RepairLeaks != 0 && c.rep.CheckErrors == 0 && c.rep.Corruptions == 0 && c.rep.Leaks == 0)
	word := "ERROR"
	if repair {
		word = "Repairing"
	}
	n := uint64(h.L1Size)
	c.l1buf = growL1Buf(c.l1buf, uint32(n))
	for i := uint64(0); i < n; i += checkL1Chunk {
		pos := h.L1TableOffset + i*8
		if pos >= uint64(c.fileSize) {
			break
		}
		cnt := min(n-i, checkL1Chunk)
		if err := c.spend(int64(cnt)); err != nil {
			return err
		}
		b := c.l1buf[:cnt*8]
		if err := c.readZ(b, pos); err != nil {
			return err
		}
		for j := uint64(0); j < cnt; j++ {
			e := be64(b[8*j:])
			l2 := e & L1OffsetMask
			if l2 == 0 {
				continue
			}
			rc, ok, err := c.storedRefcount(l2 >> c.cbits)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if (rc == 1) != (e&OflagCopied != 0) {
				c.rep.Corruptions++
				c.msg(MsgCorruption, "%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", word, i+j, e, rc)
				if repair {
					if err := c.fixL1Copied(b, i, i+j, e, rc == 1); err != nil {
						return err
					}
				}
			}
			if err := c.copiedL2(l2, word, repair); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *refChecker) copiedL2(off uint64, word string, repair bool) error {
	n := c.cs / c.entSize
	if err := c.spend(n); err != nil {
		return err
	}
	if err := c.readZ(c.buf, off); err != nil {
		return err
	}
	dirty := int64(0)
	var memo blockMemo
	for i := int64(0); i < n; i++ {
		raw := be64(c.buf[i*c.entSize:])
		if raw&OflagCompressed != 0 || raw&L2OffsetMask == 0 {
			continue // not a data or an allocated zero cluster
		}
		rc, ok, err := memo.refcount(c, (raw&L2OffsetMask)>>c.cbits)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if (rc == 1) != (raw&OflagCopied != 0) {
			c.rep.Corruptions++
			c.msg(MsgCorruption, "%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", word, raw, rc)
			if repair {
				binary.BigEndian.PutUint64(c.buf[i*c.entSize:], raw^OflagCopied)
				dirty++
			}
		}
	}
	if dirty > 0 {
		return c.fixL2Copied(off, dirty)
	}
	return nil
}

// bitmaps is qemu's qcow2_check_bitmaps_refcounts.
func (c *refChecker) bitmaps() error {
	h := c.h
	ext, ok, err := h.Bitmaps()
	if err != nil || !ok {
		return err
	}
	if h.AutoclearFeatures&AutoclearBitmaps == 0 {
		// qemu ignores the extension, with a warning when it opens the image.
		if h.Version < 3 {
			c.msg(MsgInfo, "warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent")
		} else {
			c.msg(MsgInfo, "warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent")
		}
		c.msg(MsgInfo, "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.")
		c.refuse("it has a bitmaps extension that qemu drops when it opens the image read-write")
		return nil
	}
	if ext.NbBitmaps == 0 {
		return nil
	}
	c.refuse("it has persistent bitmaps")
	if err != nil || !ok || ext.NbBitmaps == 0 {
		return err
	}
	c.inc(ext.DirectoryOffset, ext.DirectorySize)
	bms, err := c.bitmapDirectory(ext)
	if err != nil {
		c.rep.Corruptions++
		return err
	}
	for _, bm := range bms {
		c.inc(bm.tableOffset, uint64(bm.tableSize)*8)
		if err := c.spend(int64(bm.tableSize)); err != nil {
			return err
		}
		raw := make([]byte, uint64(bm.tableSize)*8)
		if err := c.readZ(raw, bm.tableOffset); err != nil {
			return err
		}
		for i := range bm.tableSize {
			if !c.bitmapEntryOK(be64(raw[8*i:])) {
				c.rep.Corruptions++
				return errcode.New(errcode.Qcow2Corrupt, "qcow2 check: bitmap %q: invalid bitmap table entry %d", bm.name, i)
			}
		}
		for i := range bm.tableSize {
			if off := be64(raw[8*i:]) & L1OffsetMask; off != 0 {
				c.inc(off, uint64(c.cs))
			}
		}
	}
	return nil
}

type checkBitmap struct {
	tableOffset uint64
	tableSize   uint32
	name        string
}

func (c *refChecker) bitmapEntryOK(e uint64) bool {
	const reserved = 0xff000000000001fe
	if e&reserved != 0 {
		return false
	}
	off := e & L1OffsetMask
	return off == 0 || (e&1 == 0 && off&uint64(c.cs-1) == 0)
}

// bitmapDirectory reads the bitmap directory with the checks of qemu's
// bitmap_list_load (which qemu also runs when it opens the image).
func (c *refChecker) bitmapDirectory(ext BitmapsExt) ([]checkBitmap, error) {
	bad := func(format string, args ...any) error {
		return errcode.New(errcode.Qcow2Corrupt, "qcow2 check: bitmap directory: "+format, args...)
	}
	if ext.DirectorySize == 0 {
		return nil, bad("size is zero")
	}
	if ext.DirectorySize > MaxBitmapDirectory {
		return nil, bad("size %d is too big", ext.DirectorySize)
	}
	dir := make([]byte, ext.DirectorySize)
	if err := c.readZ(dir, ext.DirectoryOffset); err != nil {
		return nil, err
	}
	var out []checkBitmap
	pos := uint64(0)
	size := uint64(len(dir))
	for pos < size {
		if size-pos < 24 {
			return nil, bad("broken")
		}
		if uint64(len(out)) >= uint64(ext.NbBitmaps) {
			return nil, bad("more bitmaps found than specified in the header extension")
		}
		d := dir[pos:]
		bm := checkBitmap{tableOffset: be64(d[0:]), tableSize: be32(d[8:])}
		flags := be32(d[12:])
		typ, gran := d[16], d[17]
		nameLen := uint64(be16(d[18:]))
		extra := uint64(be32(d[20:]))
		entLen := (24 + nameLen + extra + 7) &^ 7
		if entLen > size-pos {
			return nil, bad("broken")
		}
		if extra != 0 {
			return nil, bad("bitmap extra data is not supported")
		}
		bm.name = string(d[24+extra : 24+extra+nameLen])
		phys := uint64(bm.tableSize) * uint64(c.cs)
		if bm.tableSize == 0 || bm.tableOffset == 0 || bm.tableOffset&uint64(c.cs-1) != 0 ||
			bm.tableSize > bmeMaxTableSize || gran > 31 || gran < 9 || flags&0xfffffffc != 0 ||
			nameLen > bmeMaxName || typ != 1 || phys > bmeMaxPhysSize ||
			c.h.Size/512*512 > (phys*8)<<gran {
			return nil, bad("bitmap %q doesn't satisfy the constraints", bm.name)
		}
		out = append(out, bm)
		pos += entLen
	}
	if uint64(len(out)) != uint64(ext.NbBitmaps) {
		return nil, bad("less bitmaps found than specified in the header extension")
	}
	return out, nil
}

// refblockCache keeps a few refcount blocks for qcow2_get_refcount.
type refblockCache struct {
	offs   [16]uint64
	blocks [16]*RefcountBlock
	next   int
}

// forget drops the block at off, which was written.
func (rc *refblockCache) forget(off uint64) {
	for i, o := range rc.offs {
		if o == off {
			rc.offs[i], rc.blocks[i] = 0, nil
		}
	}
}

func (rc *refblockCache) get(c *refChecker, off uint64) (*RefcountBlock, error) {
	for i, o := range rc.offs {
		if o == off && rc.blocks[i] != nil {
			return rc.blocks[i], nil
		}
	}
	i := rc.next
	rc.next = (rc.next + 1) % len(rc.offs)
	var data []byte
	if b := rc.blocks[i]; b != nil {
		data = b.Bytes()
	} else {
		data = make([]byte, c.cs)
	}
	rc.offs[i], rc.blocks[i] = 0, nil
	if err := c.readZ(data, off); err != nil {
		return nil, err
	}
	rc.offs[i], rc.blocks[i] = off, NewRefcountBlock(int64(off), data, c.h.RefcountOrder)
	return rc.blocks[i], nil
}

// checkCounts holds one counter per host cluster: 16-bit counters in chunks
// allocated on first use, with the exact value of counters at or above 0xffff
// in a map (only reachable with 32- and 64-bit refcounts).
type checkCounts struct {
	chunks [][]uint16
	big    map[int64]uint64
	n      int64 // the counters init expects: a chunk past them starts short
}

const checkChunkBits = 16

func (rc *checkCounts) init(n int64) {
	rc.chunks = make([][]uint16, checkDivUp(n, 1<<checkChunkBits))
	rc.n = n
}

func (rc *checkCounts) get(k int64) uint64 {
	ci, i := k>>checkChunkBits, k&(1<<checkChunkBits-1)
	if ci >= int64(len(rc.chunks)) || i >= int64(len(rc.chunks[ci])) {
		return 0
	}
	v := rc.chunks[ci][i]
	if v == math.MaxUint16 {
		return rc.big[k]
	}
	return uint64(v)
}

// nextNonZero returns the first counter at or after k, and before end, that
// is not zero, or end: chunks never written are skipped whole.
func (rc *checkCounts) nextNonZero(k, end int64) int64 {
	for k < end {
		ci, i := k>>checkChunkBits, k&(1<<checkChunkBits-1)
		if ci >= int64(len(rc.chunks)) {
			return end
		}
		chunk := rc.chunks[ci]
		for ; i < int64(len(chunk)) && k < end; i, k = i+1, k+1 {
			if chunk[i] != 0 {
				return k
			}
		}
		k = (ci + 1) << checkChunkBits
	}
	return end
}

func (rc *checkCounts) set(k int64, v uint64) {
	ci := k >> checkChunkBits
	if ci >= int64(len(rc.chunks)) {
		rc.chunks = append(rc.chunks, make([][]uint16, ci+1-int64(len(rc.chunks)))...)
	}
	if i := k & (1<<checkChunkBits - 1); i >= int64(len(rc.chunks[ci])) {
		// A small image's one chunk holds only its counters (it grows
		// whole for a reference past them).
		n := int64(1 << checkChunkBits)
		if rc.chunks[ci] == nil {
			n = min(n, max(i+1, rc.n-ci<<checkChunkBits))
		}
		grown := make([]uint16, n)
		copy(grown, rc.chunks[ci])
		rc.chunks[ci] = grown
	}
	if v >= math.MaxUint16 {
		if rc.big == nil {
			rc.big = map[int64]uint64{}
		}
		rc.big[k] = v
		v = math.MaxUint16
	} else if rc.big != nil {
		delete(rc.big, k)
	}
	rc.chunks[ci][k&(1<<checkChunkBits-1)] = uint16(v)
}

// checkDivUp is a/b rounded up, for a >= 0 and b > 0.
func checkDivUp(a, b int64) int64 {
	q := a / b
	if a%b != 0 {
		q++
	}
	return q
}

// checkHexAlt formats v like C's "%#x": "0" for zero, else 0x-prefixed hex.
func checkHexAlt(v uint64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}
