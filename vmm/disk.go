package vmm

import (
	"context"
	"encoding/binary"
	"fmt"

	"instarfs/errcode"
)

// OpDisk serves the flattened chain of its images (top first) as a session:
// the ready document is a DiskReady, and each request frame is a DiskRequest.
const OpDisk = "disk"

// DiskReady is the ready document of an OpDisk session.
type DiskReady struct {
	VirtualSize int64 `json:"virtual-size"`
}

// Kinds of disk request.
const (
	// DiskRead asks for the bytes [Off, Off+Len) of the flattened chain; the
	// reply is exactly Len bytes.
	DiskRead = 1
	// DiskExtent asks whether the chain stores data at Off; the reply is a
	// DiskRun (diskRunBytes bytes) for the run that starts there.
	DiskExtent = 2
	// DiskMap asks for the runs of data and holes from Off on, as
	// consecutive DiskRuns: as many as the reply holds, or until the worker
	// has spent its budget; the host asks again from where they end.
	DiskMap = 3
)

// MaxDiskRead bounds one DiskRead: the worker's buffer, and so its memory, does
// not grow with what a reader asks.
const MaxDiskRead = 1 << 20

// DiskRequest is one request frame of an OpDisk session.
type DiskRequest struct {
	Kind     byte
	Off, Len int64
}

const diskRequestBytes = 17

// Encode returns the frame body of r.
func (r DiskRequest) Encode() []byte {
	b := make([]byte, diskRequestBytes)
	b[0] = r.Kind
	binary.BigEndian.PutUint64(b[1:], uint64(r.Off))
	binary.BigEndian.PutUint64(b[9:], uint64(r.Len))
	return b
}

// DecodeDiskRequest decodes a request frame body; the worker checks the
// offsets against its disk.
func DecodeDiskRequest(b []byte) (DiskRequest, error) {
	if len(b) != diskRequestBytes {
		return DiskRequest{}, errcode.New(errcode.WorkerProtocol, "a disk request of %d bytes, not %d", len(b), diskRequestBytes)
	}
	r := DiskRequest{Kind: b[0], Off: int64(binary.BigEndian.Uint64(b[1:])), Len: int64(binary.BigEndian.Uint64(b[9:]))}
	return r, nil
}

// DiskRun is the reply to DiskExtent: from the offset asked, Length bytes that
// are all data or all a hole (they read as zero and store nothing).
type DiskRun struct {
	Data   bool
	Length int64
}

const diskRunBytes = 9

// Encode returns the reply body of r.
func (r DiskRun) Encode() []byte {
	b := make([]byte, diskRunBytes)
	if r.Data {
		b[0] = 1
	}
	binary.BigEndian.PutUint64(b[1:], uint64(r.Length))
	return b
}

// Disk is the host's side of an OpDisk session: every reply is checked
// against what was asked before it is believed.
type Disk struct {
	S    *Session
	Size int64 // the virtual size, from the ready document
}

// OpenDisk wraps a started OpDisk session whose disk must be size bytes.
func OpenDisk(s *Session, size int64) (*Disk, error) {
	var ready DiskReady
	if err := strictUnmarshal(s.Ready, &ready); err != nil || ready.VirtualSize != size {
		s.Close()
		return nil, errcode.New(errcode.WorkerProtocol, "the disk worker announced %.80q for a disk of %d bytes", s.Ready, size)
	}
	return &Disk{S: s, Size: size}, nil
}

// ReadAt fills p with the disk's bytes at off; [off, off+len(p)) must lie
// within the disk and len(p) be at most MaxDiskRead.
func (d *Disk) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || len(p) > MaxDiskRead || off+int64(len(p)) > d.Size {
		return errcode.New(errcode.Internal, "disk read of %d bytes at %d outside the disk or too large", len(p), off)
	}
	n, err := d.S.Call(ctx, DiskRequest{Kind: DiskRead, Off: off, Len: int64(len(p))}.Encode(), p)
	if err == nil && n != len(p) {
		err = d.violation("a read reply of %d bytes for %d asked", n, len(p))
	}
	return err
}

// Extent returns the run of data or hole that starts at off (0 <= off < Size).
func (d *Disk) Extent(ctx context.Context, off int64) (DiskRun, error) {
	if off < 0 || off >= d.Size {
		return DiskRun{}, errcode.New(errcode.Internal, "disk extent at %d outside the disk", off)
	}
	var b [diskRunBytes]byte
	n, err := d.S.Call(ctx, DiskRequest{Kind: DiskExtent, Off: off}.Encode(), b[:])
	if err != nil {
		return DiskRun{}, err
	}
	r := DiskRun{Data: b[0] == 1, Length: int64(binary.BigEndian.Uint64(b[1:]))}
	if n != diskRunBytes || b[0] > 1 || r.Length <= 0 || r.Length > d.Size-off {
		return DiskRun{}, d.violation("an extent reply %x for offset %d of %d", b[:n], off, d.Size)
	}
	return r, nil
}

// Map returns the runs of data and holes from off (0 <= off < Size) on, at
// least one, consecutive and within the disk.
func (d *Disk) Map(ctx context.Context, off int64) ([]DiskRun, error) {
	if off < 0 || off >= d.Size {
		return nil, errcode.New(errcode.Internal, "disk map at %d outside the disk", off)
	}
	b := make([]byte, MaxDiskRead/diskRunBytes*diskRunBytes)
	n, err := d.S.Call(ctx, DiskRequest{Kind: DiskMap, Off: off}.Encode(), b)
	if err != nil {
		return nil, err
	}
	if n == 0 || n%diskRunBytes != 0 {
		return nil, d.violation("a map reply of %d bytes", n)
	}
	runs := make([]DiskRun, 0, n/diskRunBytes)
	for at := off; len(runs) < n/diskRunBytes; {
		r := b[len(runs)*diskRunBytes:]
		run := DiskRun{Data: r[0] == 1, Length: int64(binary.BigEndian.Uint64(r[1:]))}
		if r[0] > 1 || run.Length <= 0 || run.Length > d.Size-at {
			return nil, d.violation("a map run %x at offset %d of %d", r[:diskRunBytes], at, d.Size)
		}
		runs = append(runs, run)
		at += run.Length
	}
	return runs, nil
}

// violation ends a session whose reply parsed but made no sense.
func (d *Disk) violation(format string, args ...any) error {
	d.S.mu.Lock()
	defer d.S.mu.Unlock()
	return d.S.fail(&protocolError{fmt.Errorf(format, args...)})
}
