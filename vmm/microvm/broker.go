package microvm

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"sync"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// A guest cannot be handed a descriptor once it runs, so a job with a broker
// boots at most twice (ARCHITECTURE.md, "Backing files with a VM"). The
// first guest gets the job's images, and the files of Job.Attach, as drives,
// and asks the broker its questions over a virtio-serial port (the relay
// below). A file the broker answers with that is attached goes to the guest
// as its drive; one that is not, as a member the guest reads through the
// port: the host preads bounded ranges of the descriptor the broker opened
// and copies them, never interpreting them. An operation that reads only
// metadata ends in that guest. One that needs every member's data asks for
// them (proto.PortDrives): the host stops the guest and boots a second with
// every file the broker opened attached, writable as the broker decided,
// and answers its questions, which must be the first guest's, with the
// first guest's answers, by drive. Any other question is refused
// (CHAIN_CHANGED): a guest never makes the host attach a file the broker
// did not open in the first boot.

// errBootAgain ends a first boot whose worker needs every member attached.
var errBootAgain = errors.New("the worker needs every member attached")

// relay is the host's end of a brokered run's port, over both boots.
type relay struct {
	broker vmm.Broker
	images int // the job's images, members 0..images-1

	// members are the files of the run: the job's images, then those the
	// broker opened, by the index its answer gave them.
	members []*os.File
	refs    []proto.ImageRef // as the guest gets them, Size set

	// drives are the files attached after the images in this boot, in
	// drive order (drive 1 first).
	drives []vmm.Attached

	// log keeps the first boot's questions and the broker's answers; the
	// second boot replays them (replay), from next.
	log    []exchange
	replay bool
	next   int

	questions int   // of this boot
	readBytes int64 // read through the port in all
	again     bool  // the worker asked for every member attached

	mu        sync.Mutex
	violation error // the worker broke the port's protocol
	refusal   error // the relay refused a question itself
}

// exchange is one question of the first boot and the broker's answer.
type exchange struct {
	req    proto.BrokerRequest
	reply  proto.BrokerReply
	opened int // the member the answer opened, or -1
}

func newRelay(job vmm.Job) *relay {
	r := &relay{broker: job.Broker, images: len(job.Files), drives: job.Attach}
	r.members = append(r.members, job.Files...)
	r.refs = append(r.refs, job.Request.Images...)
	return r
}

// bootAgain makes the relay ready for the second boot: every member the
// broker opened is a drive.
func (r *relay) bootAgain() {
	r.drives = nil
	for i := r.images; i < len(r.members); i++ {
		r.drives = append(r.drives, vmm.Attached{File: r.members[i], Ref: r.refs[i]})
	}
	r.replay, r.next, r.questions, r.again = true, 0, 0, false
}

// serve answers the guest's frames from in on out until the port closes, the
// worker asks for its members (stop ends the guest) or breaks the protocol
// (stop too).
func (r *relay) serve(in io.Reader, out io.Writer, stop func()) {
	for {
		kind, body, err := proto.ReadPortFrame(in, proto.MaxBrokerBytes)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, os.ErrClosed) {
				r.fail(errcode.New(errcode.WorkerProtocol, "broker port: %v", err))
				stop()
			}
			return
		}
		switch kind {
		case proto.PortQuestion:
			err = r.question(body, out)
		case proto.PortRead:
			err = r.readFor(body, out)
		case proto.PortDrives:
			if r.replay {
				err = errcode.New(errcode.WorkerProtocol, "broker port: the second guest asked for its members again")
				break
			}
			r.again = true
			stop()
			return
		default:
			err = errcode.New(errcode.WorkerProtocol, "broker port: a frame of kind %q", kind)
		}
		if err != nil {
			r.fail(err)
			stop()
			return
		}
	}
}

// question answers one proto.BrokerRequest.
func (r *relay) question(body []byte, out io.Writer) error {
	if r.questions++; r.questions > proto.MaxBrokerRequests {
		return errcode.New(errcode.WorkerProtocol, "more than %d broker requests", proto.MaxBrokerRequests)
	}
	var req proto.BrokerRequest
	if err := proto.Decode(body, &req); err != nil {
		return errcode.New(errcode.WorkerProtocol, "broker request: %v", err)
	}
	var reply proto.BrokerReply
	var err error
	if r.replay {
		reply = r.replayed(req)
	} else if reply, err = r.ask(req); err != nil {
		return err
	}
	b, err := json.Marshal(reply)
	if err != nil {
		return err
	}
	return proto.WritePortFrame(out, proto.PortAnswer, b)
}

// ask puts a question of the first boot to the broker and keeps what it
// opened.
func (r *relay) ask(req proto.BrokerRequest) (proto.BrokerReply, error) {
	reply, files := r.broker.Answer(req)
	e := exchange{req: req, reply: reply, opened: -1}
	if len(files) > len(reply.Reopened) {
		if reply.Image != len(r.members) {
			return proto.BrokerReply{}, errcode.New(errcode.Internal, "the broker opened member #%d after %d", reply.Image, len(r.members))
		}
		st, err := files[0].Stat()
		if err != nil {
			return proto.BrokerReply{}, errcode.New(errcode.ReadFailed, "stat %s: %v", reply.Name, err)
		}
		e.opened = reply.Image
		r.members = append(r.members, files[0])
		r.refs = append(r.refs, proto.ImageRef{Name: reply.Name, Format: reply.Format, Writable: reply.Writable, Size: st.Size()})
		files = files[1:]
	}
	for j, k := range reply.Reopened {
		if k < 1 || k >= len(r.members) || j >= len(files) {
			return proto.BrokerReply{}, errcode.New(errcode.Internal, "the broker reopened member #%d of %d", k, len(r.members))
		}
		r.members[k] = files[j]
		r.refs[k].Writable = true
	}
	r.log = append(r.log, e)
	return r.translate(e), nil
}

// replayed answers a question of the second boot with the first boot's
// answer to the same question.
func (r *relay) replayed(req proto.BrokerRequest) proto.BrokerReply {
	if r.next >= len(r.log) || !reflect.DeepEqual(req, r.log[r.next].req) {
		err := errcode.New(errcode.ChainChanged, "the second guest asked question %d about image #%d, not the first guest's: the host attaches nothing more", r.next+1, req.Image)
		r.mu.Lock()
		if r.refusal == nil {
			r.refusal = err
		}
		r.mu.Unlock()
		return proto.BrokerReply{Error: err}
	}
	e := r.log[r.next]
	r.next++
	return r.translate(e)
}

// translate is the broker's answer as the guest of this boot gets it: the
// file it opened as a drive when one holds it, else as a member to read
// through the port; members the broker reopened read-write are drives
// attached read-write in the second boot, never descriptors.
func (r *relay) translate(e exchange) proto.BrokerReply {
	reply := e.reply
	reply.Reopened = nil
	if e.opened < 0 {
		return reply
	}
	ref := r.refs[e.opened]
	reply.Size, reply.Writable = ref.Size, false
	for i, d := range r.drives {
		if d.File == r.members[e.opened] {
			reply.Drive, reply.Writable = i+1, d.Ref.Writable
			return reply
		}
	}
	reply.Remote = true
	return reply
}

// readFor answers a proto.PortReadArgs with the bytes of a member read
// through the port, or refuses it.
func (r *relay) readFor(body []byte, out io.Writer) error {
	var a proto.PortReadArgs
	if err := proto.Decode(body, &a); err != nil {
		return errcode.New(errcode.WorkerProtocol, "read request: %v", err)
	}
	b, err := r.read(a)
	if err != nil {
		eb, _ := json.Marshal(errcode.From(err))
		proto.WritePortFrame(out, proto.PortRefused, eb)
		return err
	}
	return proto.WritePortFrame(out, proto.PortData, b)
}

// read reads what a asks for, within the bounds of a member read through the
// port (one the broker opened that is not attached) and of the port.
func (r *relay) read(a proto.PortReadArgs) ([]byte, error) {
	if a.Image < 0 || a.Image >= len(r.refs) || r.attached(a.Image) {
		return nil, errcode.New(errcode.WorkerProtocol, "a read of image #%d, which is not a member read through the port", a.Image)
	}
	size := r.refs[a.Image].Size
	if a.Offset < 0 || a.Offset > size || a.Length <= 0 || a.Length > proto.MaxPortRead {
		return nil, errcode.New(errcode.WorkerProtocol, "a read of %d bytes at %d of image #%d, outside its %d bytes or longer than %d",
			a.Length, a.Offset, a.Image, size, proto.MaxPortRead)
	}
	n := min(int64(a.Length), size-a.Offset)
	if r.readBytes += n; r.readBytes > proto.MaxPortReadTotal {
		return nil, errcode.New(errcode.WorkerProtocol, "more than %d bytes read through the port", proto.MaxPortReadTotal)
	}
	b := make([]byte, n)
	m, err := r.members[a.Image].ReadAt(b, a.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, errcode.New(errcode.ReadFailed, "reading %s: %v", r.refs[a.Image].Name, err)
	}
	return b[:m], nil
}

// attached reports whether member i is a drive of this boot.
func (r *relay) attached(i int) bool {
	if i < r.images {
		return true
	}
	for _, d := range r.drives {
		if d.File == r.members[i] {
			return true
		}
	}
	return false
}

func (r *relay) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.violation == nil {
		r.violation = err
	}
}

// failure returns what ends the run whatever the worker said: the relay's
// own refusal (a question the second guest must not ask) or a broken
// protocol.
func (r *relay) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.violation != nil {
		return r.violation
	}
	return r.refusal
}
