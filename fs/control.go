package fs

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
)

// controlNode is a control file, rebase, commit or repair. The first write(2)
// of an open carries the subcommand's arguments; the write runs the operation
// as a job and returns when it is done, with an errno that says how it went.
// Reading it gives the forms it accepts (ctl.Usage).
type controlNode struct {
	node
	op   string
	kind int
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
	setAttr(&out.Attr, cn.kind, &st)
	out.Size = cn.fs.size(ctx, cn.kind, cn.imageRel(), &st)
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
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		return &snapshot{data: []byte(ctl.Usage(cn.op))}, fuse.FOPEN_DIRECT_IO, 0
	case syscall.O_RDWR:
		return nil, 0, syscall.EACCES
	}
	return &controlHandle{node: cn}, fuse.FOPEN_DIRECT_IO, 0
}

// controlHandle is one open of a control file. Its first write is the
// command. A later write of the same bytes is that write restarted by the
// writer's runtime after EINTR (Python and Go retry interrupted writes): it
// waits for the job the first one started and returns its outcome. Any other
// later write is refused: it is the rest of a command split into several
// writes, which must not run as a command of its own.
type controlHandle struct {
	node  *controlNode
	mu    sync.Mutex
	first []byte   // the first write; nil before it
	job   *ctl.Job // the job the first write started; nil if it was refused
}

var _ gofs.FileWriter = (*controlHandle)(nil)

func (h *controlHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	wctx, stop := callerContext(ctx)
	defer stop()
	h.mu.Lock()
	first, job := h.first, h.job
	if first == nil {
		h.first = bytes.Clone(data)
		if h.first == nil {
			h.first = []byte{}
		}
	}
	h.mu.Unlock()
	switch {
	case first == nil:
		job, errno := h.node.start(wctx, string(data))
		if job == nil {
			return 0, errno
		}
		h.mu.Lock()
		h.job = job
		h.mu.Unlock()
		return h.node.wait(wctx, job, false, len(data))
	case job != nil && bytes.Equal(data, first):
		return h.node.wait(wctx, job, true, len(data))
	}
	return 0, h.node.refuseLater(first, data, job != nil)
}

// start validates args and starts the operation as a job. A refusal is
// recorded in the image's status and result.json, and returned as an errno.
func (cn *controlNode) start(ctx context.Context, args string) (*ctl.Job, syscall.Errno) {
	f := cn.fs
	rel := cn.imageRel()
	id, _, errno := cn.imageID()
	if errno != 0 {
		return nil, errno
	}
	spec := ctl.JobSpec{Operation: cn.op, Image: rel, Arguments: strings.TrimRight(args, "\n"), Top: id}
	refuse := func(err error) (*ctl.Job, syscall.Errno) {
		f.cfg.Jobs.Record(spec, err)
		return nil, errcode.Of(err).Errno()
	}
	if err := f.cfg.Jobs.BusyError(id); err != nil {
		return refuse(err)
	}
	top := id
	c, ok := f.imageClass(ctx, rel, top)
	if !ok {
		return nil, syscall.ENOENT
	}
	if c.err != nil {
		return refuse(c.err)
	}
	o := f.cfg.Opener
	// A rebase or commit whose worker asks for the backing files reserves
	// each as the broker opens it: the job's one worker both finds the chain
	// and runs the operation.
	var reservation chainmodel.Reservation
	if cn.op != "repair" {
		reservation = f.cfg.Jobs.Reservation(top, func(id chainmodel.FileID) {
			f.revokeDisks([]chainmodel.FileID{id}, cn.op)
		})
	}
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
		req.Top, req.Reservation = &top, reservation
		if req.Backing, err = f.hostName("rebase", "-b", rel, req.Backing); err != nil {
			return refuse(err)
		}
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
		req.Top, req.Reservation = &top, reservation
		if req.Base, err = f.hostName("commit", "-b", rel, req.Base); err != nil {
			return refuse(err)
		}
		spec.Run = func(ctx context.Context, p ctl.Progress) (*ctl.Envelope, error) {
			return ctl.Commit(ctx, o, rel, req, p)
		}
	case "repair":
		mode, err := ctl.ParseRepair(args)
		if err != nil {
			return refuse(err)
		}
		req := ctl.RepairRequest{Mode: mode, Format: c.format, Top: &top}
		spec.Run = func(ctx context.Context, _ ctl.Progress) (*ctl.Envelope, error) {
			return ctl.RepairImage(ctx, o, rel, req)
		}
	default:
		return nil, syscall.EIO
	}

	// Reserve every file the job touches: the chain (or only its top, when
	// the job reserves the rest as it opens them), and a new backing file.
	members, err := f.members(ctx, rel, top, c.format, newBacking, reservation != nil)
	if errcode.Of(err) == errcode.ImageInUse {
		// A job of this mount on a file this chain shares holds its lock:
		// say which, rather than blame another process.
		if held, busy := f.chainBusy(ctx, rel, top); busy {
			if e := f.cfg.Jobs.BusyError(held); e != nil {
				err = e
			}
		}
	}
	if err != nil {
		return refuse(err)
	}
	spec.Members, spec.Learns = members, reservation != nil
	run := spec.Run
	spec.Run = func(ctx context.Context, p ctl.Progress) (*ctl.Envelope, error) {
		// The job holds the chain now: no disk opens it until it ends.
		f.revokeDisks(members, cn.op)
		return run(ctx, p)
	}
	job, err := f.cfg.Jobs.Start(spec)
	if err != nil {
		return refuse(err)
	}
	return job, 0
}

// wait waits for job and returns what the write that waits for it returns:
// n on success, the errno of its error otherwise. A write restarted after an
// interrupted one gets ECANCELED rather than EINTR for a cancelled job, so
// that a runtime that restarts writes on EINTR does not restart it forever.
func (cn *controlNode) wait(ctx context.Context, job *ctl.Job, restarted bool, n int) (uint32, syscall.Errno) {
	_, err := job.Wait(ctx)
	switch {
	case err == nil:
		return uint32(n), 0
	case restarted && errcode.Of(err) == errcode.Cancelled:
		return 0, syscall.ECANCELED
	}
	return 0, errcode.Of(err).Errno()
}

// refuseLater refuses a write that follows the first on the same open, and
// records why.
func (cn *controlNode) refuseLater(first, data []byte, ran bool) syscall.Errno {
	id, _, errno := cn.imageID()
	if errno != 0 {
		return errno
	}
	what := "was refused"
	if ran {
		what = "ran as the whole command"
	}
	line := func(b []byte) string {
		s := strings.TrimRight(string(b), "\n")
		if len(s) > 64 {
			s = s[:64] + "..."
		}
		return ctl.QuoteWord(s)
	}
	err := errcode.New(errcode.BadArguments, "%s: a second write on one open file: %s, after %s, which %s; "+
		"a command must come in one write: write it as one line (bash's echo and printf write once per line)",
		cn.op, line(data), line(first), what)
	cn.fs.cfg.Jobs.Record(ctl.JobSpec{Operation: cn.op, Image: cn.imageRel(), Arguments: strings.TrimRight(string(data), "\n"), Top: id}, err)
	return errcode.Of(err).Errno()
}

// members returns the identities of the files a job on the image at rel (the
// file top) reserves before it starts: the top, the members of its chain
// unless the job takes them as it opens them (learns), and the new backing
// file. Without learns it opens the chain to learn them, and checks them now:
// a missing or refused file, or an image in use, is reported before the job
// starts; with it the operation reports them.
//
// A chain that cannot be opened whole (a missing old backing file, which
// `rebase -u` exists to repair) reserves the image alone: the operation itself
// then says whether it needs more.
func (f *FS) members(ctx context.Context, rel string, top chainmodel.FileID, format, newBacking string, learns bool) ([]chainmodel.FileID, error) {
	ids := []chainmodel.FileID{top}
	if !learns {
		opts := ctl.OpenOptions{Format: format, Want: &top}
		c, err := f.cfg.Opener.OpenChain(ctx, rel, opts)
		if err != nil && errcode.Of(err) != errcode.ImageInUse && errcode.Of(err) != errcode.ImageChanged && ctx.Err() == nil {
			opts.NoBacking = true
			c, err = f.cfg.Opener.OpenChain(ctx, rel, opts)
		}
		if err != nil {
			return nil, err
		}
		ids = ids[:0]
		for _, im := range c.Images {
			ids = append(ids, im.ID())
		}
		c.Close()
	}
	if newBacking != "" {
		im := chainmodel.Image{Loc: f.loc(rel)}
		nf, _, st, err := f.cfg.Opener.Policy.OpenName(im.Dir(), newBacking)
		if errcode.Of(err) == errcode.BackingNotFound {
			return ids, nil // the operation says whether it needs the file (rebase -u does not)
		}
		if err != nil {
			return nil, err
		}
		nf.Close()
		ids = append(ids, chainmodel.IDOf(&st))
	}
	return ids, nil
}
