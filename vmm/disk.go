package vmm

import (
	"context"
	"fmt"

	"instarfs/errcode"
	"instarfs/proto"
)

// Disk is the host's side of an OpDisk session: every reply is checked
// against what was asked before it is believed.
type Disk struct {
	S    *Session
	Size int64 // the virtual size, from the ready document
}

// OpenDisk wraps a started OpDisk session whose disk must be size bytes.
func OpenDisk(s *Session, size int64) (*Disk, error) {
	var ready proto.DiskReady
	if err := proto.Decode(s.Ready, &ready); err != nil || ready.VirtualSize != size {
		s.Close()
		return nil, errcode.New(errcode.WorkerProtocol, "the disk worker announced %.80q for a disk of %d bytes", s.Ready, size)
	}
	return &Disk{S: s, Size: size}, nil
}

// ReadAt fills p with the disk's bytes at off; [off, off+len(p)) must lie
// within the disk and len(p) be at most MaxDiskRead.
func (d *Disk) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || len(p) > proto.MaxDiskRead || off+int64(len(p)) > d.Size {
		return errcode.New(errcode.Internal, "disk read of %d bytes at %d outside the disk or too large", len(p), off)
	}
	n, err := d.S.Call(ctx, proto.DiskRequest{Kind: proto.DiskRead, Off: off, Len: int64(len(p))}.Encode(), p)
	if err == nil && n != len(p) {
		err = d.violation("a read reply of %d bytes for %d asked", n, len(p))
	}
	return err
}

// Extent returns the run of data or hole that starts at off (0 <= off < Size).
func (d *Disk) Extent(ctx context.Context, off int64) (proto.DiskRun, error) {
	if off < 0 || off >= d.Size {
		return proto.DiskRun{}, errcode.New(errcode.Internal, "disk extent at %d outside the disk", off)
	}
	var b [proto.DiskRunBytes]byte
	n, err := d.S.Call(ctx, proto.DiskRequest{Kind: proto.DiskExtent, Off: off}.Encode(), b[:])
	if err != nil {
		return proto.DiskRun{}, err
	}
	r, ok := proto.DecodeDiskRun(b[:])
	if n != proto.DiskRunBytes || !ok || r.Length <= 0 || r.Length > d.Size-off {
		return proto.DiskRun{}, d.violation("an extent reply %x for offset %d of %d", b[:n], off, d.Size)
	}
	return r, nil
}

// Map returns the runs of data and holes from off (0 <= off < Size) on, at
// least one, consecutive and within the disk.
func (d *Disk) Map(ctx context.Context, off int64) ([]proto.DiskRun, error) {
	if off < 0 || off >= d.Size {
		return nil, errcode.New(errcode.Internal, "disk map at %d outside the disk", off)
	}
	b := make([]byte, proto.MaxDiskRead/proto.DiskRunBytes*proto.DiskRunBytes)
	n, err := d.S.Call(ctx, proto.DiskRequest{Kind: proto.DiskMap, Off: off}.Encode(), b)
	if err != nil {
		return nil, err
	}
	if n == 0 || n%proto.DiskRunBytes != 0 {
		return nil, d.violation("a map reply of %d bytes", n)
	}
	runs := make([]proto.DiskRun, 0, n/proto.DiskRunBytes)
	for at := off; len(runs) < n/proto.DiskRunBytes; {
		r := b[len(runs)*proto.DiskRunBytes:]
		run, ok := proto.DecodeDiskRun(r)
		if !ok || run.Length <= 0 || run.Length > d.Size-at {
			return nil, d.violation("a map run %x at offset %d of %d", r[:proto.DiskRunBytes], at, d.Size)
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
