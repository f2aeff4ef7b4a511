package worker

import (
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/vmdk"
)

// vmdkRebase says what rebaseVmdkImages does. qemu-img cannot rebase vmdk images
// (it has no way to change a vmdk's parent); instarfs defines it:
//
//   - unsafe: the descriptor's parentFileNameHint becomes Name and parentCID
//     the new parent's CID; nothing else changes;
//   - safe: first, every grain the top does not define is compared between
//     the old chain and the new one, and where they differ the old chain's
//     bytes are written into the top; then the descriptor is switched as in
//     unsafe mode;
//   - detach (New nil): parentCID ffffffff and no parentFileNameHint (qemu's
//     template then has a blank line where the hint was).
//
// The top's own CID does not change: what it reads through its new parent is
// what it read before.
type vmdkRebase struct {
	Top *opened // the vmdk overlay, opened writable
	// Old is the top's current chain below it, its backing file first;
	// empty when it has none. Unused in unsafe mode.
	Old layer.Stack
	// New is the new parent (a vmdk, top of its own chain), nil to detach;
	// NewChain is its chain, New first. NewChain is unused in unsafe mode.
	New      *opened
	NewChain layer.Stack
	Name     string // the parentFileNameHint to write; ignored when detaching
	Unsafe   bool
	Progress func(float64)
}

// rebaseVmdk is OpRebase for a vmdk overlay, c.all[0]. A vmdk's parent is
// always read as vmdk, so a new backing of another format is refused, and
// the new parent must be among the images even in unsafe mode: its CID
// becomes the overlay's parentCID.
func rebaseVmdk(s *session, args proto.RebaseArgs, c rebaseChains) (*proto.RebaseResult, error) {
	r := vmdkRebase{Top: c.all[0], Old: stackOf(c.old), Name: args.Backing, Unsafe: args.Unsafe, Progress: s.out.progress}
	res := &proto.RebaseResult{Mode: "safe"}
	if args.Unsafe {
		res.Mode = "unsafe"
	}
	if args.Backing != "" {
		if f := args.BackingFormat; f != "" && f != "vmdk" {
			return nil, errcode.New(errcode.VmdkParentNotVmdk, "the parent of a vmdk image must be a vmdk image, not %s (qemu reads a vmdk's parent as vmdk)", f)
		}
		if len(c.new) == 0 {
			return nil, errcode.New(errcode.BackingNotFound, "the new parent '%s' of a vmdk image must exist and be readable: its CID is recorded in the image", args.Backing)
		}
		r.New, r.NewChain = c.new[0], stackOf(c.new)
		res.BackingFormat = "vmdk"
	}
	if err := rebaseVmdkImages(r, res); err != nil {
		return nil, err
	}
	s.out.progress(1)
	return res, nil
}

// rebaseVmdkImages rebases a vmdk overlay (see vmdkRebase) and counts in res
// what it copied.
func rebaseVmdkImages(r vmdkRebase, res *proto.RebaseResult) error {
	if r.Top == nil || r.Top.v == nil {
		return errcode.New(errcode.Internal, "rebaseVmdk: the top is not a vmdk image")
	}
	parentCID := uint32(vmdk.NoParentCID)
	if r.New != nil {
		if r.New.v == nil {
			return errcode.New(errcode.VmdkParentNotVmdk, "the parent of a vmdk image must be a vmdk image, not %s (qemu reads a vmdk's parent as vmdk)", r.New.format)
		}
		parentCID = r.New.v.CID()
	}
	w, err := vmdk.NewWriter(r.Top.v, ImageFile{r.Top.file})
	if err != nil {
		return err
	}
	// Check the new descriptor before writing anything.
	update := func(d *vmdk.Descriptor) error {
		if err := d.SetParentCID(parentCID); err != nil {
			return err
		}
		return d.SetParentFileNameHint(r.Name, r.New != nil)
	}
	d := r.Top.v.Descriptor()
	if err := update(d); err != nil {
		return err
	}
	if _, err := d.EncodeEmbedded(r.Top.v.DescriptorAreaSize()); err != nil {
		return err
	}
	if !r.Unsafe {
		diff := &differ{img: r.Top.v, w: w, old: r.Old, unit: r.Top.v.GrainSize(), progress: r.Progress}
		if err := diff.copy(0, r.Top.v.VirtualSize(), r.NewChain); err != nil {
			return err
		}
		res.ClustersCopied, res.BytesCopied = diff.units, diff.bytes
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if err := w.UpdateDescriptor(update); err != nil {
		return err
	}
	return w.Flush()
}
