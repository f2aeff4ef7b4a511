package fs

import (
	"context"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
)

// controlNode is a write-only control file, rebase or commit. One write(2)
// carries the subcommand's arguments; the write runs the operation as a job
// and returns when it is done, with an errno that says how it went.
type controlNode struct {
	node
	op string
}

var (
	_ gofs.NodeOpener    = (*controlNode)(nil)
	_ gofs.NodeGetattrer = (*controlNode)(nil)
	_ gofs.NodeSetattrer = (*controlNode)(nil)
)

func (cn *controlNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	_, st, errno := cn.imageID()
	if errno != 0 {
		return errno
	}
	out.Mode = unix.S_IFREG | 0o200
	out.Nlink = 1
	setTimes(&out.Attr, &st)
	owner(&out.Attr)
	return 0
}

// Setattr accepts truncation to size 0, so that `>` works, and nothing else
// that changes the file.
func (cn *controlNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if cn.fs.cfg.ReadOnly {
		return syscall.EROFS
	}
	if size, ok := in.GetSize(); ok && size != 0 {
		return syscall.EINVAL
	}
	if _, ok := in.GetMode(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetUID(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetGID(); ok {
		return syscall.EPERM
	}
	return cn.Getattr(ctx, fh, out)
}

func (cn *controlNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if cn.fs.cfg.ReadOnly {
		return nil, 0, syscall.EROFS
	}
	if flags&syscall.O_ACCMODE != syscall.O_WRONLY {
		return nil, 0, syscall.EACCES
	}
	return &controlHandle{node: cn}, fuse.FOPEN_DIRECT_IO, 0
}

// controlHandle is one open of a control file: it takes exactly one write.
type controlHandle struct {
	node    *controlNode
	mu      sync.Mutex
	written bool
}

var _ gofs.FileWriter = (*controlHandle)(nil)

func (h *controlHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	if h.written {
		h.mu.Unlock()
		return 0, syscall.EINVAL // one write carries the whole command
	}
	h.written = true
	h.mu.Unlock()
	if errno := h.node.run(ctx, string(data)); errno != 0 {
		return 0, errno
	}
	return uint32(len(data)), 0
}

// run validates args, runs the operation as a job and waits for it.
func (cn *controlNode) run(ctx context.Context, args string) syscall.Errno {
	f := cn.fs
	rel := cn.imageRel()
	id, _, errno := cn.imageID()
	if errno != 0 {
		return errno
	}
	spec := ctl.JobSpec{Operation: cn.op, Image: rel, Arguments: strings.TrimRight(args, "\n"), Top: id}
	if f.cfg.Jobs.Busy(id) {
		err := errcode.New(errcode.ChainBusy, "another operation is running on the chain of '%s'", rel)
		f.cfg.Log.WithFields(logrus.Fields{"operation": spec.Operation, "image": rel, "arguments": spec.Arguments, "result": errcode.Code(err)}).Warn(err.Error())
		return Errno(err)
	}
	refuse := func(err error) syscall.Errno {
		f.cfg.Jobs.Record(spec, err)
		return Errno(err)
	}
	top := chainmodel.FileID(id)
	c, ok := f.imageClass(ctx, rel, top)
	if !ok {
		return syscall.ENOENT
	}
	if c.err != nil {
		return refuse(c.err)
	}
	o := f.cfg.Opener
	var newBacking string
	switch cn.op {
	case "rebase":
		req, err := ctl.ParseRebase(args)
		if err != nil {
			return refuse(err)
		}
		if req.Format == "" {
			req.Format = c.format
		}
		req.Top = &top
		newBacking = req.Backing
		spec.Run = func(ctx context.Context, p ctl.Progress) (*ctl.Envelope, error) {
			return ctl.Rebase(ctx, o, rel, req, p)
		}
	case "commit":
		req, err := ctl.ParseCommit(args)
		if err != nil {
			return refuse(err)
		}
		if req.Format == "" {
			req.Format = c.format
		}
		req.Top = &top
		spec.Run = func(ctx context.Context, p ctl.Progress) (*ctl.Envelope, error) {
			return ctl.Commit(ctx, o, rel, req, p)
		}
	default:
		return syscall.EIO
	}

	// Reserve every file the job touches: the chain, and a new backing file.
	members, err := f.members(ctx, rel, top, c.format, newBacking)
	if err != nil {
		return refuse(err)
	}
	spec.Members = members
	job, err := f.cfg.Jobs.Start(spec)
	if err != nil {
		f.cfg.Log.WithFields(logrus.Fields{"operation": spec.Operation, "image": rel, "arguments": spec.Arguments, "result": errcode.Code(err)}).Warn(err.Error())
		return Errno(err)
	}
	env, err := job.Wait(ctx)
	switch {
	case ctx.Err() != nil:
		return syscall.EINTR
	case env != nil && env.Error != nil:
		return Errno(env.Error)
	case err != nil:
		return Errno(err)
	}
	return 0
}

// members opens the chain of the image at rel (the file top), and the new
// backing file, to learn the identities of every file a job on it touches. It
// also checks them now: a missing or refused file, or an image in use, is
// reported before the job starts.
//
// A chain that cannot be opened whole (a missing old backing file, which
// `rebase -u` exists to repair) reserves the image alone: the operation itself
// then says whether it needs more.
func (f *FS) members(ctx context.Context, rel string, top chainmodel.FileID, format, newBacking string) ([]ctl.FileID, error) {
	opts := chainmodel.OpenOptions{Format: format, Want: &top}
	c, err := f.cfg.Opener.OpenChain(ctx, rel, opts)
	if err != nil && errcode.Code(err) != errcode.ImageInUse && errcode.Code(err) != errcode.ImageChanged && ctx.Err() == nil {
		opts.NoBacking = true
		c, err = f.cfg.Opener.OpenChain(ctx, rel, opts)
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var ids []ctl.FileID
	for _, im := range c.Images {
		ids = append(ids, ctl.FileID(im.ID()))
	}
	if newBacking != "" {
		nf, _, st, err := f.cfg.Opener.Policy.OpenName(c.Top().Dir(), newBacking)
		if err != nil {
			return nil, err
		}
		nf.Close()
		ids = append(ids, ctl.FileID(chainmodel.IDOf(&st)))
	}
	return ids, nil
}
