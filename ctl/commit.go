package ctl

import (
	"context"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
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
	base := 1
	j := chainJob{
		op:   proto.OpCommit,
		args: proto.CommitArgs{Drop: drop, Rate: req.Rate, Cache: req.Cache},
		opts: OpenOptions{Format: req.Format, Writable: !drop, Want: req.Top, Reservation: req.Reservation},
		reopen: func(c *chainmodel.Chain) ([]int, error) {
			if len(c.Images) < 2 {
				return nil, errcode.New(errcode.NoBackingFile, "Image does not have a backing file")
			}
			if req.Base != "" {
				var err error
				if base, err = findBase(o.Policy, c, req.Base); err != nil {
					return nil, errcode.New(errcode.BaseNotInChain, "Did not find '%s' in the backing chain of '%s'", req.Base, path)
				}
			}
			if base >= 2 {
				// The image above the base is kept valid (docs/commit.md).
				return []int{base, base - 1}, nil
			}
			return []int{base}, nil
		},
		progress: progress,
	}
	if kc := o.KnownChain(path, j.opts); kc != nil {
		// The chain is known: take the locks for writing now, before the
		// worker starts, as qemu-img does.
		idx, err := j.reopen(kc)
		for _, i := range idx {
			if err == nil {
				err = o.Policy.ReopenWritable(kc.Images[i])
			}
		}
		if err != nil {
			kc.Close()
			return nil, err
		}
		j.known, j.knownWritable = kc, idx
	}
	c, res, err := o.runChain(ctx, path, j)
	if err != nil {
		return nil, err
	}
	defer c.Close()
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
