package proto

import (
	"encoding/binary"

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
	// DiskRun (DiskRunBytes bytes) for the run that starts there.
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

// DiskRunBytes is the length of an encoded DiskRun.
const DiskRunBytes = 9

// Encode returns the reply body of r.
func (r DiskRun) Encode() []byte {
	b := make([]byte, DiskRunBytes)
	if r.Data {
		b[0] = 1
	}
	binary.BigEndian.PutUint64(b[1:], uint64(r.Length))
	return b
}

// DecodeDiskRun decodes one DiskRun of DiskRunBytes bytes; ok is false when
// its kind byte is neither hole nor data.
func DecodeDiskRun(b []byte) (r DiskRun, ok bool) {
	return DiskRun{Data: b[0] == 1, Length: int64(binary.BigEndian.Uint64(b[1:]))}, b[0] <= 1
}
