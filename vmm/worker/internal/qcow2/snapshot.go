package qcow2

import (
	"bytes"
	"io"
)

const (
	// snapshotFixedSize is the size of the fixed part of a snapshot table entry.
	snapshotFixedSize = 40
	// MaxSnapshotExtraData is qemu's limit on a snapshot entry's extra data.
	MaxSnapshotExtraData = 1024
	// MaxSnapshotTableBytes is qemu's limit on the whole snapshot table.
	MaxSnapshotTableBytes = 64 << 20
)

// Snapshot is one entry of the internal snapshot table.
type Snapshot struct {
	// EntryOffset is the host offset of the entry; EntrySize its size with
	// padding.
	EntryOffset int64
	EntrySize   int64

	L1TableOffset uint64
	L1Size        uint32
	ID            string
	Name          string
	DateSec       uint32
	DateNsec      uint32
	VMClockNsec   uint64
	// VMStateSize32 is the 32-bit field at byte 32; VMStateSize is the 64-bit
	// one from the extra data when present, else VMStateSize32.
	VMStateSize32 uint32
	VMStateSize   uint64
	// DiskSize is the virtual size at the snapshot (extra data bytes 8..15).
	DiskSize    uint64
	HasDiskSize bool
	// Icount is the instruction count for record/replay (extra data bytes
	// 16..23); qemu writes -1 (all ones) when there is none.
	Icount    uint64
	HasIcount bool
	// ExtraData is the extra data verbatim.
	ExtraData []byte
}

// Snapshots reads the snapshot table.
func (img *Image) Snapshots() ([]Snapshot, error) {
	return ReadSnapshots(img.r, img.h, img.fileSize)
}

// ReadSnapshots reads the nb_snapshots entries of the snapshot table of the
// image r with header h. Entries must lie inside the file and the table
// within qemu's limits.
func ReadSnapshots(r io.ReaderAt, h *Header, fileSize int64) ([]Snapshot, error) {
	n := int(h.NbSnapshots)
	if n == 0 {
		return nil, nil
	}
	if h.NbSnapshots > MaxSnapshots {
		return nil, badHeader("nb_snapshots %d exceeds %d", h.NbSnapshots, MaxSnapshots)
	}
	start := int64(h.SnapshotsOffset)
	if err := h.checkTable("snapshot table", h.SnapshotsOffset, uint64(n)*snapshotFixedSize, fileSize); err != nil {
		return nil, err
	}
	end := min(fileSize, start+MaxSnapshotTableBytes)
	sr := seqReader{r: r, off: start, end: end}
	out := make([]Snapshot, 0, min(n, 1024))
	for i := 0; i < n; i++ {
		var s Snapshot
		s.EntryOffset = sr.off
		fixed, err := sr.next(snapshotFixedSize)
		if err != nil {
			return nil, snapErr(i, s.EntryOffset, err)
		}
		s.L1TableOffset = be64(fixed[0:])
		s.L1Size = be32(fixed[8:])
		idLen := int(be16(fixed[12:]))
		nameLen := int(be16(fixed[14:]))
		s.DateSec = be32(fixed[16:])
		s.DateNsec = be32(fixed[20:])
		s.VMClockNsec = be64(fixed[24:])
		s.VMStateSize32 = be32(fixed[32:])
		s.VMStateSize = uint64(s.VMStateSize32)
		extraLen := be32(fixed[36:])
		if extraLen > MaxSnapshotExtraData {
			return nil, corrupt("snapshot %d at %#x: extra data is %d bytes, more than %d", i, s.EntryOffset, extraLen, MaxSnapshotExtraData)
		}
		extra, err := sr.next(int(extraLen))
		if err != nil {
			return nil, snapErr(i, s.EntryOffset, err)
		}
		s.ExtraData = bytes.Clone(extra)
		if len(extra) >= 8 {
			s.VMStateSize = be64(extra[0:])
		}
		if len(extra) >= 16 {
			s.DiskSize, s.HasDiskSize = be64(extra[8:]), true
		}
		if len(extra) >= 24 {
			s.Icount, s.HasIcount = be64(extra[16:]), true
		}
		id, err := sr.next(idLen)
		if err != nil {
			return nil, snapErr(i, s.EntryOffset, err)
		}
		s.ID = string(id)
		name, err := sr.next(nameLen)
		if err != nil {
			return nil, snapErr(i, s.EntryOffset, err)
		}
		s.Name = string(name)
		pad := (8 - (sr.off-s.EntryOffset)%8) % 8
		if _, err := sr.next(int(pad)); err != nil && i < n-1 {
			return nil, snapErr(i, s.EntryOffset, err)
		}
		s.EntrySize = sr.off - s.EntryOffset
		out = append(out, s)
	}
	return out, nil
}

func snapErr(i int, off int64, err error) error {
	if err == errSeqEnd {
		return corrupt("snapshot %d at %#x extends past the end of the file or the %d-byte table limit", i, off, MaxSnapshotTableBytes)
	}
	return err
}

var errSeqEnd = corrupt("snapshot table truncated")

// seqReader reads consecutive small pieces of a file region with few reads.
type seqReader struct {
	r        io.ReaderAt
	off, end int64 // next byte to return; end of the region
	buf      []byte
	bufOff   int64
}

// next returns the n bytes at the current offset (valid until the next
// call) and advances.
func (s *seqReader) next(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	if int64(n) > s.end-s.off {
		return nil, errSeqEnd
	}
	if s.off < s.bufOff || s.off+int64(n) > s.bufOff+int64(len(s.buf)) {
		size := min(max(int64(n), 64<<10), s.end-s.off)
		if int64(cap(s.buf)) < size {
			s.buf = make([]byte, size)
		}
		s.buf = s.buf[:size]
		if err := readFull(s.r, s.buf, s.off); err != nil {
			return nil, err
		}
		s.bufOff = s.off
	}
	p := s.buf[s.off-s.bufOff : s.off-s.bufOff+int64(n)]
	s.off += int64(n)
	return p, nil
}
