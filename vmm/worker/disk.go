package worker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
)

// maxMergedRuns bounds how many extents one DiskExtent reply merges, so that
// a fragmented disk cannot keep the worker from its next request for long.
const maxMergedRuns = 4096

// serveDisk is proto.OpDisk: it opens the chain, announces its size, then
// answers read and extent requests until the host closes its standard input.
func serveDisk(s *session, in io.Reader) error {
	if err := s.need(1); err != nil {
		return err
	}
	imgs, err := s.openImages()
	if err != nil {
		return err
	}
	stack := make(layer.Stack, len(imgs))
	for i, o := range imgs {
		stack[i] = o.img
	}
	// Reads land in the memory shared with the host when there is enough
	// of it, and are then answered with a bare FrameShared header.
	shared, err := proto.WorkerShared(s.req)
	if err != nil {
		return err
	}
	buf := shared
	if len(buf) < proto.MaxDiskRead {
		buf, shared = make([]byte, proto.MaxDiskRead), nil
	}
	s.began = true
	s.out.result(proto.DiskReady{VirtualSize: stack.VirtualSize()})
	s.out.flush()
	var hdr [4]byte
	body := make([]byte, proto.MaxFrameRequest)
	for {
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return errcode.New(errcode.WorkerProtocol, "reading a request: %v", err)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > proto.MaxFrameRequest {
			return errcode.New(errcode.WorkerProtocol, "a request of %d bytes", n)
		}
		if _, err := io.ReadFull(in, body[:n]); err != nil {
			return errcode.New(errcode.WorkerProtocol, "reading a request: %v", err)
		}
		reply, err := answerDisk(stack, body[:n], buf)
		switch {
		case err != nil:
			b := errorJSON(err)
			s.out.frame(proto.FrameError, len(b), b)
		case shared != nil && len(reply) > 0 && &reply[0] == &shared[0]:
			s.out.frame(proto.FrameShared, len(reply), nil)
		default:
			s.out.frame(proto.FrameOK, len(reply), reply)
		}
	}
}

// answerDisk answers one request of a disk session; buf holds a read's bytes.
func answerDisk(stack layer.Stack, body, buf []byte) ([]byte, error) {
	req, err := proto.DecodeDiskRequest(body)
	if err != nil {
		return nil, err
	}
	size := stack.VirtualSize()
	switch req.Kind {
	case proto.DiskRead:
		if req.Off < 0 || req.Len < 0 || req.Len > proto.MaxDiskRead || req.Off > size-req.Len {
			return nil, errcode.New(errcode.WorkerProtocol, "read of %d bytes at %d: outside the disk of %d bytes", req.Len, req.Off, size)
		}
		p := buf[:req.Len]
		if _, err := stack.ReadAt(p, req.Off); err != nil {
			return nil, err
		}
		return p, nil
	case proto.DiskExtent:
		if req.Off < 0 || req.Off >= size {
			return nil, errcode.New(errcode.WorkerProtocol, "extent at %d: outside the disk of %d bytes", req.Off, size)
		}
		run, err := diskRun(stack, req.Off)
		if err != nil {
			return nil, err
		}
		return run.Encode(), nil
	case proto.DiskMap:
		if req.Off < 0 || req.Off >= size {
			return nil, errcode.New(errcode.WorkerProtocol, "map at %d: outside the disk of %d bytes", req.Off, size)
		}
		return diskMap(stack, req.Off, buf)
	}
	return nil, errcode.New(errcode.WorkerProtocol, "unknown disk request kind %d", req.Kind)
}

// maxMapExtents bounds the extents one DiskMap reply looks at.
const maxMapExtents = 1 << 16

// diskMap writes into buf the runs of data and holes from off on: as many
// as buf holds, or until maxMapExtents extents were looked at.
func diskMap(stack layer.Stack, off int64, buf []byte) ([]byte, error) {
	size := stack.VirtualSize()
	out := buf[:0]
	var run proto.DiskRun
	for looked := 0; off+run.Length < size && looked < maxMapExtents; looked++ {
		e, err := stack.Extent(off + run.Length)
		if err != nil {
			return nil, err
		}
		data := e.Kind == layer.Data
		if run.Length > 0 && data != run.Data {
			if len(out)+2*len(run.Encode()) > len(buf) {
				break // room for this run only
			}
			out = append(out, run.Encode()...)
			off += run.Length
			run = proto.DiskRun{}
		}
		run.Data = data
		run.Length += e.Length
	}
	return append(out, run.Encode()...), nil
}

// diskRun is the run of data or of holes that starts at off: consecutive
// extents of the same kind merged, up to maxMergedRuns of them.
func diskRun(stack layer.Stack, off int64) (proto.DiskRun, error) {
	size := stack.VirtualSize()
	var run proto.DiskRun
	for i := 0; i < maxMergedRuns && off+run.Length < size; i++ {
		e, err := stack.Extent(off + run.Length)
		if err != nil {
			return proto.DiskRun{}, err
		}
		data := e.Kind == layer.Data
		if i > 0 && data != run.Data {
			break
		}
		run.Data = data
		run.Length += e.Length
	}
	return run, nil
}

// errorJSON encodes err as the body of an error frame.
func errorJSON(err error) []byte {
	var e *errcode.Error
	if !errors.As(err, &e) {
		e = &errcode.Error{Code: errcode.Internal, Message: err.Error()}
	}
	if len(e.Message) > 4<<10 {
		e = &errcode.Error{Code: e.Code, Message: e.Message[:4<<10] + "..."}
	}
	b, _ := json.Marshal(e)
	return b
}
