package chainmodel

import (
	"errors"
	"os"

	"instarfs/errcode"
	"instarfs/proto"
)

// Broker opens the files of one operation for its worker: the worker is
// handed the top image and asks for every other file by name
// (proto.BrokerRequest); the broker answers under the same policy as every
// open: the name is located and opened beneath an allowed root (Policy.OpenName:
// json:, protocols, absolute or ".." names outside the roots and escaping
// symlinks refused), a chain is at most MaxDepth deep, loops are found by
// device and inode, and each file is locked as QEMU locks an image it reads.
// Every file is opened read-only; the members the operation writes are
// reopened read-write once the chain is complete (Reopen), so the worker's
// request never decides how a file is opened.
//
// The broker keeps what it opened: Chain and NewChain return it, with what
// the worker reported about each member. The caller closes it (Close).
type Broker struct {
	Policy Policy
	// Backing lets the worker open the top's backing chain; without it
	// only the top is described.
	Backing bool
	// NewBacking, for a rebase, is the name of the new backing file
	// (resolved against the top's directory) and NewFormat its -F. Without
	// Backing (an unsafe rebase) the chain below it may be opened too, to
	// find a loop.
	NewBacking, NewFormat string
	// ForceShare opens without QEMU's locks (qemu-img -U).
	ForceShare bool
	// Reopen, when set, is called once the worker reported the last member
	// of the top's chain, and returns the members below the top the
	// operation writes: they are reopened read-write and locked for it.
	Reopen func(*Chain) ([]int, error)
	// Known, when set, is the top's chain as the host opened it before the
	// worker started (every member described in the probe cache), with the
	// members listed in KnownWritable already reopened read-write: the
	// files the worker asks for must be these (IMAGE_CHANGED otherwise),
	// and it is given them, so that every lock is held from the start.
	Known         *Chain
	KnownWritable []int
	// Reservation, when set, takes each file of the top's chain below the
	// top as it is opened, before it is locked or handed to the worker, and
	// is told when the chain is complete.
	Reservation Reservation

	members  []*member
	reopened bool
	refusal  error
}

// Reservation takes the files of an operation as the broker learns them
// (the mount reserves them for its job, so that no other job uses them).
type Reservation interface {
	// Take is called with a member of the top's chain below the top, opened
	// but not yet locked; an error refuses the member.
	Take(FileID) error
	// Complete is called when the worker has reported the last member of
	// the top's chain: every member has been taken.
	Complete()
}

// member is one file the broker opened.
type member struct {
	im        *Image
	referrer  int    // the member that names it; -1 for the top and a rebase's new backing
	format    string // the format the worker must read it as; "" detects
	detectRaw bool
	newChain  bool // part of a rebase's new backing chain
	reported  bool
}

// NewBroker returns a broker for the chain of top, an image opened (and
// locked) by the caller, whose format is format ("" to detect; raw too when
// detectRaw).
func NewBroker(p Policy, top *Image, format string, detectRaw bool) *Broker {
	return &Broker{Policy: p, members: []*member{{im: top, referrer: -1, format: format, detectRaw: detectRaw}}}
}

// Answer answers one question of the worker. The first refusal is kept
// (Refusal).
func (b *Broker) Answer(req proto.BrokerRequest) (proto.BrokerReply, []*os.File) {
	reply, files, err := b.answer(req)
	if err != nil {
		if b.refusal == nil {
			b.refusal = err
		}
		return proto.BrokerReply{Error: asError(err)}, nil
	}
	return reply, files
}

// RawNotInferred is the error of a worker that could not detect the format
// of a backing file opened without one (FORMAT_NOT_DETECTED): raw is never
// inferred. It returns nil when no such file is waiting to be described.
func (b *Broker) RawNotInferred() error {
	for _, m := range b.members[1:] {
		if m.reported || m.format != "" || m.detectRaw {
			continue
		}
		if m.referrer < 0 {
			return errcode.New(errcode.RawNotInferred, "'%s' is not qcow2 or vmdk; raw is never inferred, name it with -F raw", m.im.Name)
		}
		r := b.members[m.referrer].im
		return errcode.New(errcode.RawNotInferred, "backing file '%s' of '%s' is not qcow2 or vmdk and names no backing format; raw is never inferred", r.Info.BackingFilename, r.Name)
	}
	return nil
}

// Refusal returns the first question the broker refused, or nil. A worker
// may not report a host's code (a path-policy refusal) as its own: the host
// reports the refusal itself.
func (b *Broker) Refusal() error { return b.refusal }

func (b *Broker) answer(req proto.BrokerRequest) (proto.BrokerReply, []*os.File, error) {
	if req.Image < 0 || req.Image >= len(b.members) {
		return proto.BrokerReply{}, nil, protocolError("no image #%d", req.Image)
	}
	m := b.members[req.Image]
	switch {
	case req.Info != nil && m.reported:
		return proto.BrokerReply{}, nil, protocolError("image #%d was already described", req.Image)
	case req.Info == nil && !m.reported:
		return proto.BrokerReply{}, nil, protocolError("image #%d is not described", req.Image)
	case req.Info != nil:
		if err := CheckInfo(*req.Info, m.format, m.detectRaw); err != nil {
			return proto.BrokerReply{}, nil, err
		}
		m.im.Info, m.reported = *req.Info, true
	}
	switch req.Open {
	case "":
		if !m.newChain && (!b.Backing || m.im.Info.BackingFilename == "") {
			return b.complete()
		}
		return proto.BrokerReply{}, nil, nil
	case proto.OpenBacking:
		return b.openBacking(req.Image)
	case proto.OpenNewBacking:
		return b.openNewBacking(req.Image)
	}
	return proto.BrokerReply{}, nil, protocolError("unknown request to open %q", req.Open)
}

// openBacking opens the backing file of member i.
func (b *Broker) openBacking(i int) (proto.BrokerReply, []*os.File, error) {
	m := b.members[i]
	name := m.im.Info.BackingFilename
	switch {
	case !b.Backing && !m.newChain:
		return proto.BrokerReply{}, nil, protocolError("this operation reads no backing file")
	case name == "":
		return proto.BrokerReply{}, nil, protocolError("image #%d names no backing file", i)
	case b.depth(i) >= MaxDepth:
		return proto.BrokerReply{}, nil, errcode.New(errcode.BackingChainTooDeep, "the backing chain of '%s' is deeper than %d", b.root(i).im.Name, MaxDepth)
	}
	f, loc, st, err := b.Policy.OpenName(m.im.Dir(), name)
	if err != nil {
		return proto.BrokerReply{}, nil, err
	}
	next := &Image{Name: FullBackingName(m.im.Name, name), Loc: loc, File: f, Stat: st}
	for j := i; j >= 0; j = b.members[j].referrer {
		if b.members[j].im.ID() == next.ID() {
			f.Close()
			return proto.BrokerReply{}, nil, errcode.New(errcode.BackingChainLoop, "backing file '%s' of '%s' is already in the chain", name, m.im.Name)
		}
	}
	if m.newChain && next.ID() == b.members[0].im.ID() {
		f.Close()
		return proto.BrokerReply{}, nil, errcode.New(errcode.RebaseCreatesLoop, "'%s' is an overlay of the image being rebased: its backing chain reaches that image as '%s', so the chain would loop", b.root(i).im.Name, next.Name)
	}
	if b.Reservation != nil && !m.newChain {
		if err := b.Reservation.Take(next.ID()); err != nil {
			f.Close()
			return proto.BrokerReply{}, nil, err
		}
	}
	if b.Known != nil && !m.newChain {
		f.Close()
		return b.known(i+1, next)
	}
	return b.add(&member{im: next, referrer: i, format: m.im.Info.BackingFilenameFormat, newChain: m.newChain})
}

// openNewBacking opens the new backing file of a rebase of member 0.
func (b *Broker) openNewBacking(i int) (proto.BrokerReply, []*os.File, error) {
	top := b.members[0].im
	if i != 0 || b.NewBacking == "" {
		return proto.BrokerReply{}, nil, protocolError("this operation has no new backing file for image #%d", i)
	}
	for _, m := range b.members {
		if m.newChain && m.referrer < 0 {
			return proto.BrokerReply{}, nil, protocolError("the new backing file was already opened")
		}
	}
	f, loc, st, err := b.Policy.OpenName(top.Dir(), b.NewBacking)
	if err != nil {
		return proto.BrokerReply{}, nil, err
	}
	next := &Image{Name: FullBackingName(top.Name, b.NewBacking), Loc: loc, File: f, Stat: st}
	if next.ID() == top.ID() {
		f.Close()
		return proto.BrokerReply{}, nil, errcode.New(errcode.RebaseCreatesLoop, "'%s' is '%s' itself: an image cannot be its own backing file", b.NewBacking, top.Name)
	}
	if b.Backing {
		for j, m := range b.members[1:] {
			if m.newChain || m.im.ID() != next.ID() {
				continue
			}
			f.Close()
			if !m.reported {
				return proto.BrokerReply{}, nil, protocolError("image #%d is not described", j+1)
			}
			if b.NewFormat != "" && b.NewFormat != m.im.Info.Format {
				return proto.BrokerReply{}, nil, errcode.New(errcode.FormatMismatch, "'%s' is a %s image, not %s", b.NewBacking, m.im.Info.Format, b.NewFormat)
			}
			return proto.BrokerReply{Image: j + 1, Same: true}, nil, nil
		}
	}
	format := b.NewFormat
	if !b.Backing && top.Info.Format == "vmdk" {
		// An unsafe rebase of a vmdk image reads the new parent for its
		// CID only: its format is detected, and judged against -F by the
		// worker (a vmdk's parent is always vmdk).
		format = ""
	}
	return b.add(&member{im: next, referrer: -1, format: format, newChain: true})
}

// known answers with member k of the Known chain, which next must be.
func (b *Broker) known(k int, next *Image) (proto.BrokerReply, []*os.File, error) {
	if k >= len(b.Known.Images) || b.Known.Images[k].ID() != next.ID() || k != len(b.members) {
		return proto.BrokerReply{}, nil, errcode.New(errcode.ImageChanged, "the backing chain of '%s' changed while it was opened ('%s')", b.members[0].im.Name, next.Name)
	}
	im := b.Known.Images[k]
	b.members = append(b.members, &member{im: im, referrer: k - 1, format: b.members[k-1].im.Info.BackingFilenameFormat})
	writable := false
	for _, w := range b.KnownWritable {
		writable = writable || w == k
	}
	return proto.BrokerReply{Image: k, Name: im.Name, Format: b.members[k].format, Writable: writable}, []*os.File{im.File}, nil
}

// add locks a newly opened member and answers with it.
func (b *Broker) add(m *member) (proto.BrokerReply, []*os.File, error) {
	if !b.ForceShare {
		if err := LockImage(m.im.File, m.im.Name, false); err != nil {
			m.im.File.Close()
			return proto.BrokerReply{}, nil, err
		}
	}
	b.members = append(b.members, m)
	return proto.BrokerReply{Image: len(b.members) - 1, Name: m.im.Name, Format: m.format}, []*os.File{m.im.File}, nil
}

// complete answers the report of the last member of the top's chain: the
// members the operation writes are reopened read-write and sent along.
func (b *Broker) complete() (proto.BrokerReply, []*os.File, error) {
	if b.Known != nil && len(b.members) != len(b.Known.Images) {
		return proto.BrokerReply{}, nil, errcode.New(errcode.ImageChanged, "the backing chain of '%s' changed while it was opened", b.members[0].im.Name)
	}
	if b.Reservation != nil {
		b.Reservation.Complete()
	}
	if b.Reopen == nil || b.reopened {
		return proto.BrokerReply{}, nil, nil
	}
	b.reopened = true
	c := b.Chain()
	idx, err := b.Reopen(c)
	if err != nil {
		return proto.BrokerReply{}, nil, err
	}
	var reply proto.BrokerReply
	var files []*os.File
	for _, i := range idx {
		if i < 1 || i >= len(c.Images) {
			return proto.BrokerReply{}, nil, errcode.New(errcode.Internal, "reopening image %d of a chain of %d", i, len(c.Images))
		}
		if err := b.Policy.ReopenWritable(c.Images[i]); err != nil {
			return proto.BrokerReply{}, nil, err
		}
		reply.Reopened = append(reply.Reopened, b.index(c.Images[i]))
		files = append(files, c.Images[i].File)
	}
	return reply, files, nil
}

// index returns the member number of im.
func (b *Broker) index(im *Image) int {
	for i, m := range b.members {
		if m.im == im {
			return i
		}
	}
	return -1
}

// depth is the number of members above member i in its chain.
func (b *Broker) depth(i int) int { return b.depthOf(b.members[i]) }

// root is the first member of i's chain: the top, or the new backing file.
func (b *Broker) root(i int) *member {
	for b.members[i].referrer >= 0 {
		i = b.members[i].referrer
	}
	return b.members[i]
}

// Chain returns the top and the backing files the worker opened below it,
// top first.
func (b *Broker) Chain() *Chain {
	c := &Chain{}
	for _, m := range b.members {
		if !m.newChain {
			c.Images = append(c.Images, m.im)
		}
	}
	return c
}

// NewChain returns the new backing file of a rebase and the files opened
// below it, or nil when none was opened.
func (b *Broker) NewChain() *Chain {
	var c *Chain
	for _, m := range b.members {
		if m.newChain {
			if c == nil {
				c = &Chain{}
			}
			c.Images = append(c.Images, m.im)
		}
	}
	return c
}

// Described reports whether the worker described every member of the top's
// chain it was given (an operation that ended without doing so must not be
// trusted to have read them).
func (b *Broker) Described() error {
	for i, m := range b.members {
		if !m.reported && !m.newChain {
			return protocolError("the worker did not describe image #%d ('%s')", i, m.im.Name)
		}
	}
	return nil
}

// DescribedChain returns the top's chain as far as the worker described it, and
// closes the files it was given but did not describe: what an operation that
// failed below the top could still show.
func (b *Broker) DescribedChain() *Chain {
	c := &Chain{}
	for _, m := range b.members {
		switch {
		case m.reported && !m.newChain && len(c.Images) == b.depthOf(m):
			c.Images = append(c.Images, m.im)
		default:
			UnlockImage(m.im.File)
			m.im.File.Close()
		}
	}
	return c
}

// depthOf is the position of m in its chain.
func (b *Broker) depthOf(m *member) int {
	n := 0
	for j := m.referrer; j >= 0; j = b.members[j].referrer {
		n++
	}
	return n
}

// Asked returns how the worker was told to read im: its format ("" to
// detect) and whether raw may be detected.
func (b *Broker) Asked(im *Image) (format string, detectRaw bool) {
	for _, m := range b.members {
		if m.im == im {
			return m.format, m.detectRaw
		}
	}
	return "", false
}

// Close unlocks and closes every file the broker opened, the top included,
// and the Known chain.
func (b *Broker) Close() {
	for _, m := range b.members {
		UnlockImage(m.im.File)
		m.im.File.Close()
	}
	if b.Known != nil {
		for _, im := range b.Known.Images[min(len(b.members), len(b.Known.Images)):] {
			UnlockImage(im.File)
			im.File.Close()
		}
	}
}

func protocolError(format string, args ...any) error {
	return errcode.New(errcode.WorkerProtocol, "broker: "+format, args...)
}

// asError is err as the worker receives it.
func asError(err error) *errcode.Error {
	var e *errcode.Error
	if errors.As(err, &e) {
		return e
	}
	return errcode.New(errcode.Internal, "%v", err)
}
