package worker

import (
	"encoding/json"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// The broker of a microvm guest is its virtio-serial port (proto.PortQuestion
// says how it is spoken): files come as drives attached when the guest
// booted or as members read through the port.

// port is the worker's end of a guest's broker port. One exchange runs at a
// time.
type port struct {
	mu sync.Mutex
	r  PortReader
	w  FDWriter
}

// exchange sends one frame and reads the answer, whose body is at most max
// bytes.
func (p *port) exchange(kind byte, body []byte, max int) (byte, []byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := proto.WritePortFrame(p.w, kind, body); err != nil {
		return 0, nil, errcode.New(errcode.WorkerProtocol, "asking the host: %v", err)
	}
	k, b, err := proto.ReadPortFrame(&p.r, max)
	if err != nil {
		return 0, nil, errcode.New(errcode.WorkerProtocol, "reading the host's answer: %v", err)
	}
	return k, b, nil
}

// askPort is ask over the port: a file the host opened is a drive, or none
// when it is not attached (BrokerReply.Remote).
func (s *session) askPort(req proto.BrokerRequest) (proto.BrokerReply, []*os.File, error) {
	var reply proto.BrokerReply
	b, err := json.Marshal(req)
	if err != nil {
		return reply, nil, errInternal("encoding a broker request: %v", err)
	}
	kind, body, err := s.port.exchange(proto.PortQuestion, b, proto.MaxBrokerBytes)
	if err != nil {
		return reply, nil, err
	}
	switch {
	case kind != proto.PortAnswer:
		return reply, nil, errcode.New(errcode.WorkerProtocol, "the host answered a question with a frame of kind %q", kind)
	case proto.Decode(body, &reply) != nil:
		return reply, nil, errcode.New(errcode.WorkerProtocol, "decoding the host's answer")
	case reply.Error != nil:
		return proto.BrokerReply{}, nil, reply.Error
	case reply.Drive < 0 || reply.Drive > len(s.req.Drives):
		return proto.BrokerReply{}, nil, errcode.New(errcode.WorkerProtocol, "the host answered with drive %d of %d", reply.Drive, len(s.req.Drives))
	case reply.Drive > 0:
		return reply, []*os.File{s.drives[reply.Drive-1]}, nil
	}
	return reply, nil, nil
}

// readRemote reads n bytes at off of member i through the port.
func (s *session) readRemote(i int, off int64, n int) ([]byte, error) {
	b, _ := json.Marshal(proto.PortReadArgs{Image: i, Offset: off, Length: n})
	kind, body, err := s.port.exchange(proto.PortRead, b, proto.MaxPortRead)
	if err != nil {
		return nil, err
	}
	switch kind {
	case proto.PortData:
		if len(body) > n {
			return nil, errcode.New(errcode.WorkerProtocol, "the host answered a read of %d bytes with %d", n, len(body))
		}
		return body, nil
	case proto.PortRefused:
		var e errcode.Error
		if err := proto.Decode(body, &e); err != nil {
			return nil, errcode.New(errcode.WorkerProtocol, "decoding the host's refusal: %v", err)
		}
		return nil, &e
	}
	return nil, errcode.New(errcode.WorkerProtocol, "the host answered a read with a frame of kind %q", kind)
}

// remote reads a member the host did not attach, through the port.
type remote struct {
	s     *session
	image int
	size  int64
}

func (r remote) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		at := off + int64(n)
		if at >= r.size {
			return n, io.EOF
		}
		k := int(min(int64(len(p)-n), proto.MaxPortRead, r.size-at))
		b, err := r.s.readRemote(r.image, at, k)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], b)
		if len(b) < k {
			return n, io.EOF
		}
	}
	return n, nil
}

// portMapLimit is how large, in all, the members read through a guest's
// port may be for a map to be made through it: a map reads every member's
// tables, which grow with the member.
const portMapLimit = 64 << 20

// needDrives asks the host, when imgs holds members read through the port of
// more than limit bytes in all, for a guest with every member attached: the
// operation reads their data (limit 0), or more of their metadata than the
// port should carry. The host then stops this guest: needDrives returns
// only when it did not.
func (s *session) needDrives(imgs []*opened, limit int64) error {
	remote, n := false, int64(0)
	for _, o := range imgs {
		if o.file == nil {
			remote, n = true, n+o.size
		}
	}
	if !remote || n <= limit {
		return nil
	}
	s.port.exchange(proto.PortDrives, nil, 0)
	return errcode.New(errcode.WorkerProtocol, "the host did not attach the members of the chain")
}

// PortReader reads a guest's virtio-serial port. QEMU never tells the guest
// that its end of a serial port is connected to a character device that was
// open before the port existed (standard input), and a port whose host end
// is not connected reads as empty rather than blocking: an empty read means
// "nothing yet", and the reader waits a little and tries again. The host
// ends a run by stopping the machine.
type PortReader struct{ FD int }

// portPoll is how long PortReader waits after an empty read.
const portPoll = time.Millisecond

func (r *PortReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(r.FD, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case n == 0 && len(p) > 0:
			time.Sleep(portPoll)
			continue
		}
		return n, nil
	}
}

// FDWriter writes a descriptor with plain blocking system calls.
type FDWriter int

func (w FDWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Write(int(w), p[done:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}
