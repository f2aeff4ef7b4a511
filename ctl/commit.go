package ctl

import (
	"context"
	"encoding/json"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// Commit commits the image at path into its backing file (req.Base empty) or
// into the image of its backing chain that req.Base names, as qemu-img commit
// does, and returns the result envelope, or an error; Run makes the envelope
// users see of either.
//
// The base is opened read-write, and so is the top unless req.Drop or
// req.Base; with req.Base, the image just above the base too: before the base
// changes it receives the base's old data it would otherwise lose, so that
// every image of the chain keeps showing what it showed (qemu-img leaves the
// intermediate images invalid; see docs/commit.md). No header is rewritten.
func Commit(ctx context.Context, o *Opener, path string, req CommitRequest, progress Progress) (*Envelope, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	drop := req.Drop || req.Base != ""
	c, err := o.OpenChain(ctx, path, OpenOptions{Format: req.Format, Writable: !drop, Want: req.Top})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if len(c.Images) < 2 {
		return nil, errcode.New(errcode.NoBackingFile, "Image does not have a backing file")
	}
	base := 1
	if req.Base != "" {
		if base, err = findBase(o.Policy, c, req.Base); err != nil {
			return nil, errcode.New(errcode.BaseNotInChain, "Did not find '%s' in the backing chain of '%s'", req.Base, path)
		}
	}
	if err := reopenWritable(o, c, base); err != nil {
		return nil, err
	}
	if base >= 2 {
		// The image above the base is kept valid (docs/commit.md).
		if err := reopenWritable(o, c, base-1); err != nil {
			return nil, err
		}
	}
	refs := c.Refs()
	refs[base].Writable = true
	refs[base-1].Writable = base >= 2 || !drop
	refs[0].Writable = !drop
	args, _ := json.Marshal(proto.CommitArgs{Base: base, Drop: drop, Rate: req.Rate, Cache: req.Cache})
	res, err := o.Sandbox.Run(ctx, vmm.Job{
		Request:  proto.Request{Op: proto.OpCommit, Images: refs, Args: args},
		Files:    c.Files(),
		Progress: progress,
	})
	if err != nil {
		return nil, err
	}
	var r proto.CommitResult
	if err := DecodeResult(res, &r); err != nil {
		return nil, err
	}
	if r.ClustersCommitted < 0 || r.BytesCommitted < 0 || r.OverlayClustersCleared < 0 {
		return nil, errcode.New(errcode.WorkerProtocol, "worker reported negative commit counts")
	}
	b := c.Images[base]
	name := b.Name
	return &Envelope{
		Operation:              "commit",
		Image:                  path,
		Format:                 c.Top().Info.Format,
		Backing:                &name,
		BackingFormat:          b.Info.Format,
		ClustersCommitted:      &r.ClustersCommitted,
		BytesCommitted:         &r.BytesCommitted,
		OverlayClustersCleared: &r.OverlayClustersCleared,
	}, nil
}

// findBase returns the index in c of the image that base names, the way
// qemu's bdrv_find_backing_image matches it: for each image of the chain,
// base taken relative to that image's directory (or absolute) must be the
// same file as the image's backing file. base is looked up under the policy.
func findBase(p chainmodel.Policy, c *chainmodel.Chain, base string) (int, error) {
	for i := 0; i+1 < len(c.Images); i++ {
		loc, err := p.Locate(c.Images[i].Dir(), base)
		if err != nil {
			continue
		}
		st, err := p.Stat(loc, chainmodel.How{Backing: true, Name: base})
		if err == nil && chainmodel.IDOf(&st) == c.Images[i+1].ID() {
			return i + 1, nil
		}
	}
	return 0, errcode.New(errcode.BaseNotInChain, "%s is not in the chain", base)
}

// reopenWritable replaces the read-only descriptor of image i of c (a backing
// image) by a read-write one, opened where it was opened, checked to be the
// same file and locked as qemu locks an image it writes.
func reopenWritable(o *Opener, c *chainmodel.Chain, i int) error {
	im := c.Images[i]
	chainmodel.UnlockImage(im.File)
	id := im.ID()
	f, _, err := o.Policy.Open(im.Loc, chainmodel.How{Access: chainmodel.ReadWrite, Want: &id, Backing: true, Name: im.Name})
	if err != nil {
		return err
	}
	if err := chainmodel.LockImage(f, im.Name, true); err != nil {
		f.Close()
		return err
	}
	im.File.Close()
	im.File = f
	return nil
}
