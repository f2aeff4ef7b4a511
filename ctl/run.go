package ctl

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// chainJob is an operation one worker runs on the chain of an image.
type chainJob struct {
	op   string
	args any
	// opts say how the top is opened, and with NoBacking that the worker
	// reads the top alone.
	opts OpenOptions
	// reopen, when set, returns the members below the top the operation
	// writes, once the chain is known.
	reopen func(*chainmodel.Chain) ([]int, error)
	// known, when set, is the chain opened beforehand (Opener.KnownChain)
	// with the members knownWritable reopened read-write: the worker is
	// given these files, and reopen is not called.
	known         *chainmodel.Chain
	knownWritable []int
	// newBacking and newFormat are a rebase's -b and -F: the worker may ask
	// for that file (brokered runs only).
	newBacking, newFormat string
	progress              Progress
	// infos, when set, returns from the worker's result the whole
	// description of every member (a question describes a member without
	// its snapshots): the chain then carries them, and the probe cache
	// keeps them. A worker that could not open the chain whole describes
	// the members above the failure and returns the error as stop.
	infos func(json.RawMessage) (infos []proto.Info, stop, err error)
}

// runChain runs j on the image at path in one worker, and returns the chain
// it ran on, open (the caller closes it), and the worker's result.
//
// The worker is handed the top alone and asks for each backing file by name;
// a chainmodel.Broker answers under the policy. With opts.Partial, a failure
// below the top returns the images described so far (still open) together
// with the error.
func (o *Opener) runChain(ctx context.Context, path string, j chainJob) (*chainmodel.Chain, json.RawMessage, error) {
	args, err := json.Marshal(j.args)
	if err != nil {
		return nil, nil, errcode.New(errcode.Internal, "encoding %s arguments: %v", j.op, err)
	}
	var top *chainmodel.Image
	if j.known != nil {
		top = j.known.Top()
	} else if top, err = o.openTop(path, j.opts); err != nil {
		return nil, nil, err
	}
	b := o.broker(top, j.opts)
	b.Reopen = j.reopen
	if j.known != nil {
		b.Known, b.KnownWritable, b.Reopen = j.known, j.knownWritable, nil
	}
	b.NewBacking, b.NewFormat = j.newBacking, j.newFormat
	ref := proto.ImageRef{Name: filepath.Base(path), Format: j.opts.Format, Writable: j.opts.Writable, DetectRaw: j.opts.Format == ""}
	res, err := o.Sandbox.Run(ctx, vmm.Job{
		Request:  proto.Request{Op: j.op, Images: []proto.ImageRef{ref}, Args: args},
		Files:    []*os.File{top.File},
		Broker:   b,
		Attach:   attach(j.known, j.knownWritable),
		Progress: j.progress,
	})
	var infos []proto.Info
	var stop error
	if err == nil && j.infos != nil {
		infos, stop, err = j.infos(res)
	}
	if r := b.Refusal(); r != nil && (stop != nil || errcode.Of(err) == errcode.WorkerProtocol) {
		// The worker relayed the broker's refusal, which the host reports
		// in its own words (a worker may not send a host's code).
		stop, err = stopOrErr(stop, err, r)
	}
	if errcode.Of(err) == errcode.FormatNotDetected || errcode.Of(stop) == errcode.FormatNotDetected {
		if r := b.RawNotInferred(); r != nil {
			stop, err = stopOrErr(stop, err, r)
		}
	}
	if err == nil && stop != nil {
		return o.stopped(b, infos, stop, j.opts.Partial)
	}
	if err == nil {
		err = b.Described()
	}
	if err != nil {
		if j.opts.Partial {
			if c := b.DescribedChain(); len(c.Images) > 0 {
				return c, nil, err
			}
			return nil, nil, err
		}
		b.Close()
		return nil, nil, err
	}
	if nc := b.NewChain(); nc != nil {
		nc.Close() // a rebase's new chain: nothing more to do with it
	}
	c := b.Chain()
	if j.infos != nil {
		if err := o.describeAll(b, c, infos, !j.opts.Writable && j.reopen == nil); err != nil {
			b.Close()
			return nil, nil, err
		}
	}
	return c, res, nil
}

// attach lists the members below the top of a chain opened beforehand, the
// files its broker answers with, for a backend that attaches them up front.
func attach(known *chainmodel.Chain, writable []int) []vmm.Attached {
	if known == nil {
		return nil
	}
	var out []vmm.Attached
	for i, im := range known.Images[1:] {
		ref := proto.ImageRef{Name: im.Name, Writable: slices.Contains(writable, i+1)}
		out = append(out, vmm.Attached{File: im.File, Ref: ref})
	}
	return out
}

// stopped ends a run whose worker described the chain down to where it could
// not go on (stop): with partial, it returns the members described, open and
// with their whole descriptions, together with stop.
func (o *Opener) stopped(b *chainmodel.Broker, infos []proto.Info, stop error, partial bool) (*chainmodel.Chain, json.RawMessage, error) {
	c := b.DescribedChain()
	if len(infos) > len(c.Images) {
		// The host refused the last description itself (stop says why).
		infos = infos[:len(c.Images)]
	}
	if err := o.describeAll(b, c, infos, false); err != nil {
		c.Close()
		return nil, nil, err
	}
	if !partial || len(c.Images) == 0 {
		c.Close()
		return nil, nil, stop
	}
	return c, nil, stop
}

// describeAll gives the members of c the whole descriptions the worker
// returned, which must be what it told the broker plus the snapshots, and
// keeps them in the probe cache when remember is set.
func (o *Opener) describeAll(b *chainmodel.Broker, c *chainmodel.Chain, infos []proto.Info, remember bool) error {
	if len(infos) != len(c.Images) {
		return errcode.New(errcode.WorkerProtocol, "worker described %d images of a chain of %d", len(infos), len(c.Images))
	}
	for i, im := range c.Images {
		format, detectRaw := b.Asked(im)
		if err := chainmodel.CheckInfo(infos[i], format, detectRaw); err != nil {
			return err
		}
		brief := infos[i]
		brief.Snapshots = nil
		if !reflect.DeepEqual(brief, im.Info) {
			return errcode.New(errcode.WorkerProtocol, "worker described '%s' in two ways", im.Name)
		}
		im.Info = infos[i]
		if remember {
			o.remember(im, format, detectRaw)
		}
	}
	return nil
}

// openTop opens and locks the image at path as opts say.
func (o *Opener) openTop(path string, opts OpenOptions) (*chainmodel.Image, error) {
	loc, ok := o.Policy.Place(path)
	if !ok {
		return nil, errcode.New(errcode.BackingPathOutsideRoot, "'%s' is outside the allowed directories", path)
	}
	if opts.Writable && opts.ForceShare {
		return nil, errcode.New(errcode.BadArguments, "force share (-U) is for read-only opens only; '%s' would be written", path)
	}
	access := chainmodel.Read
	if opts.Writable {
		access = chainmodel.ReadWrite
	}
	f, st, err := o.Policy.Open(loc, chainmodel.How{Access: access, Want: opts.Want, Name: path})
	if err != nil {
		return nil, err
	}
	if err := lockUnlessShared(f, path, opts); err != nil {
		f.Close()
		return nil, err
	}
	return &chainmodel.Image{Name: path, Loc: loc, File: f, Stat: st}, nil
}

// broker returns the broker of a chain whose top is open.
func (o *Opener) broker(top *chainmodel.Image, opts OpenOptions) *chainmodel.Broker {
	b := chainmodel.NewBroker(o.Policy, top, opts.Format, opts.Format == "")
	b.Backing = !opts.NoBacking
	b.ForceShare = opts.ForceShare
	b.Reservation = opts.Reservation
	return b
}

// cachedChain opens the chain of path as OpenChain does, without a worker,
// when every member's description is in the probe cache: the same broker
// answers the questions the worker would have asked. It returns nil when a
// member is not cached or anything fails; a worker then finds out why.
func (o *Opener) cachedChain(path string, opts OpenOptions) *chainmodel.Chain {
	if o.cache().Len() == 0 {
		return nil // nothing cached (a command line's run): open the top once, for the worker
	}
	top, err := o.openTop(path, opts)
	if err != nil {
		return nil
	}
	b := o.broker(top, opts)
	im, format, detectRaw := top, opts.Format, opts.Format == ""
	for i := 0; ; {
		info, ok := o.cached(im, format, detectRaw)
		if !ok {
			b.Close()
			return nil
		}
		req := proto.BrokerRequest{Image: i, Info: &info}
		if !opts.NoBacking && info.BackingFilename != "" {
			req.Open = proto.OpenBacking
		}
		reply, _ := b.Answer(req)
		if reply.Error != nil {
			b.Close()
			return nil
		}
		if req.Open == "" {
			return b.Chain()
		}
		c := b.Chain()
		i, im, format, detectRaw = reply.Image, c.Images[len(c.Images)-1], reply.Format, false
	}
}

// stopOrErr puts the broker's refusal r in place of the worker's account of
// it: the stop of a partial description, or the run's error.
func stopOrErr(stop, err, r error) (error, error) {
	if err == nil {
		return r, nil
	}
	return stop, r
}
