package worker

import (
	"encoding/json"
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// maxReplyFiles bounds the descriptors one broker reply may carry: the
// opened file and the reopened ones.
const maxReplyFiles = 4

// ask sends one question to the host's broker and returns its answer and the
// descriptors that came with it, in the reply's order. The host's refusal is
// the returned error.
func (s *session) ask(req proto.BrokerRequest) (proto.BrokerReply, []*os.File, error) {
	if s.port != nil {
		return s.askPort(req)
	}
	var reply proto.BrokerReply
	fd := s.broker
	if !s.req.Broker || fd < 0 {
		return reply, nil, errcode.New(errcode.WorkerProtocol, "the host gave this worker no broker to ask for files")
	}
	b, err := json.Marshal(req)
	if err != nil {
		return reply, nil, errInternal("encoding a broker request: %v", err)
	}
	if _, err := unix.Write(fd, b); err != nil {
		return reply, nil, errcode.New(errcode.WorkerProtocol, "asking the host: %v", err)
	}
	buf := make([]byte, proto.MaxBrokerBytes)
	oob := make([]byte, unix.CmsgSpace(4*maxReplyFiles))
	n, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	for err == unix.EINTR {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	}
	if err != nil || n == 0 {
		return reply, nil, errcode.New(errcode.WorkerProtocol, "reading the host's answer: %v", err)
	}
	files, err := rights(oob[:oobn])
	if err == nil && flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		err = errcode.New(errcode.WorkerProtocol, "the host's answer was truncated")
	}
	if err == nil {
		if derr := proto.Decode(buf[:n], &reply); derr != nil {
			err = errcode.New(errcode.WorkerProtocol, "decoding the host's answer: %v", derr)
		}
	}
	if err == nil && reply.Error != nil {
		err = reply.Error
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return proto.BrokerReply{}, nil, err
	}
	return reply, files, nil
}

// rights returns the descriptors of a control message.
func rights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, errcode.New(errcode.WorkerProtocol, "the host's answer: %v", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "broker"))
		}
	}
	return files, nil
}

// discover opens the request's images for an operation. A worker given its
// images up front opens them all. A worker with a broker is given the top
// alone: it opens the top, describes it to the host and, with chain, asks
// for each backing file in turn until the chain ends. Every image obtained is
// added to the request (s.req.Images, s.files) as if the host had handed it
// over, so the operations index them as before. The host's answer to the
// description of the last member may hand over writable descriptors for
// members the operation writes; they replace the read-only ones. A chain
// that cannot be opened whole ends in the error, returned with the members
// described before it.
func (s *session) discover(chain bool) ([]*opened, error) {
	if !s.req.Broker {
		return s.openImages()
	}
	if err := s.need(1); err != nil {
		return nil, err
	}
	top, err := openImage(s.files[0], s.req.Images[0], s.req.Images[0].DetectRaw)
	if err != nil {
		return nil, err
	}
	imgs := []*opened{top}
	for i := 0; ; i++ {
		cur := imgs[i]
		if !chain || cur.info.BackingFilename == "" {
			if err := s.describe(i, &cur.info, imgs); err != nil {
				return imgs, err
			}
			return imgs, nil
		}
		next, err := s.openBacking(i, cur, proto.OpenBacking)
		if err != nil {
			return imgs, err // described up to cur: the host keeps what it was told
		}
		if next.index != len(imgs) {
			return nil, errcode.New(errcode.WorkerProtocol, "the host answered with image #%d for image #%d", next.index, len(imgs))
		}
		imgs = append(imgs, next.img)
	}
}

// backing is a file the broker opened.
type backing struct {
	index int
	img   *opened // nil when same
	same  bool    // the file is member index, already open
}

// openBacking asks for the file that member i (described or not yet) refers
// to, what says which (proto.OpenBacking, proto.OpenNewBacking), and opens it.
func (s *session) openBacking(i int, cur *opened, what string) (backing, error) {
	req := proto.BrokerRequest{Image: i, Open: what}
	if !cur.described {
		req.Info = brief(&cur.info)
	}
	reply, files, err := s.ask(req)
	if err != nil {
		return backing{}, &hostRefusal{err}
	}
	cur.described = true
	if reply.Same {
		for _, f := range files {
			f.Close()
		}
		return backing{index: reply.Image, same: true}, nil
	}
	want := 1
	if reply.Remote {
		want = 0 // read through the port
	}
	if len(files) != want || len(reply.Reopened) != 0 || reply.Image != len(s.files) || reply.Remote && (s.port == nil || reply.Writable) {
		for _, f := range files {
			f.Close()
		}
		return backing{}, errcode.New(errcode.WorkerProtocol, "the host's answer carries %d descriptors for image #%d", len(files), reply.Image)
	}
	ref := proto.ImageRef{Name: reply.Name, Format: reply.Format, Writable: reply.Writable, Size: reply.Size}
	s.req.Images = append(s.req.Images, ref)
	var img *opened
	if reply.Remote {
		s.files = append(s.files, nil)
		img, err = openRemote(remote{s: s, image: reply.Image, size: reply.Size}, ref)
	} else {
		s.files = append(s.files, files[0])
		img, err = openImage(files[0], ref, false)
	}
	if err != nil {
		return backing{}, err // FORMAT_NOT_DETECTED: the host says RAW_NOT_INFERRED
	}
	return backing{index: reply.Image, img: img}, nil
}

// describe reports member i to the host without asking for a file, and takes
// the writable descriptors the answer may carry in place of read-only ones
// among imgs.
func (s *session) describe(i int, info *proto.Info, imgs []*opened) error {
	req := proto.BrokerRequest{Image: i}
	if !imgs[i].described {
		req.Info = brief(info)
	}
	reply, files, err := s.ask(req)
	if err != nil {
		return err
	}
	imgs[i].described = true
	if len(files) != len(reply.Reopened) {
		for _, f := range files {
			f.Close()
		}
		return errcode.New(errcode.WorkerProtocol, "the host's answer carries %d descriptors for %d images", len(files), len(reply.Reopened))
	}
	for j, k := range reply.Reopened {
		if k < 1 || k >= len(imgs) {
			return errcode.New(errcode.WorkerProtocol, "the host reopened image #%d of %d", k, len(imgs))
		}
		ref := s.req.Images[k]
		ref.Writable = true
		o, err := openImage(files[j], ref, false)
		if err != nil {
			return err
		}
		s.files[k].Close()
		s.files[k], s.req.Images[k], imgs[k] = files[j], ref, o
	}
	return nil
}

// hostRefusal is the host's answer refusing a file, as opposed to a file the
// worker could not read.
type hostRefusal struct{ err error }

func (r *hostRefusal) Error() string { return r.err.Error() }
func (r *hostRefusal) Unwrap() error { return r.err }

// hostRefused reports whether err is the host's refusal.
func (s *session) hostRefused(err error) bool {
	var r *hostRefusal
	return errors.As(err, &r)
}

// brief is what a question says about a member: its description without
// the snapshots, whose list is unbounded (an operation that shows them
// returns them in its result).
func brief(info *proto.Info) *proto.Info {
	b := *info
	b.Snapshots = nil
	return &b
}
