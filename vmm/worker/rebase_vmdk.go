package worker

import (
	"bytes"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/vmdk"
)

// vmdkRebase says what rebaseVmdk does. qemu-img cannot rebase vmdk images
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
	// Old is the top's current chain below it, its backing file first; nil
	// when it has none. Unused in unsafe mode.
	Old []layer.Image
	// New is the new parent (a vmdk, top of its own chain), nil to detach;
	// NewChain is its chain, New first. NewChain is unused in unsafe mode.
	New      *opened
	NewChain []layer.Image
	Name     string // the parentFileNameHint to write; ignored when detaching
	Unsafe   bool
	Progress func(float64)
}

// vmdkRebaseResult counts what a safe rebase copied.
type vmdkRebaseResult struct {
	GrainsCopied int64
	BytesCopied  int64
}

// rebaseVmdk is OpRebase for a vmdk overlay: imgs are the request's images
// opened in order (the overlay, the old chain, the new chain; see
// proto.RebaseArgs). A vmdk's parent is always read as vmdk, so a new backing
// of another format is refused, and the new parent must be among the images
// even in unsafe mode: its CID becomes the overlay's parentCID.
func rebaseVmdk(s *session, args proto.RebaseArgs, imgs []*opened) (*proto.RebaseResult, error) {
	top := imgs[0]
	old := imgs[1 : 1+args.OldCount]
	newChain := imgs[1+args.OldCount:]
	if args.NewInOld >= 0 {
		newChain = old[args.NewInOld:]
	}
	r := vmdkRebase{Top: top, Old: layers(old), Name: args.Backing, Unsafe: args.Unsafe, Progress: s.out.progress}
	res := &proto.RebaseResult{Mode: "safe"}
	if args.Unsafe {
		res.Mode = "unsafe"
	}
	if args.Backing != "" {
		if f := args.BackingFormat; f != "" && f != "vmdk" {
			return nil, errcode.New(errcode.VmdkParentNotVmdk, "the parent of a vmdk image must be a vmdk image, not %s (qemu reads a vmdk's parent as vmdk)", f)
		}
		if len(newChain) == 0 {
			return nil, errcode.New(errcode.BackingNotFound, "the new parent '%s' of a vmdk image must exist and be readable: its CID is recorded in the image", args.Backing)
		}
		r.New, r.NewChain = newChain[0], layers(newChain)
		res.BackingFormat = "vmdk"
	}
	out, err := rebaseVmdkImages(r)
	if err != nil {
		return nil, err
	}
	res.ClustersCopied, res.BytesCopied = out.GrainsCopied, out.BytesCopied
	s.out.progress(1)
	return res, nil
}

// rebaseVmdkImages rebases a vmdk overlay; see vmdkRebase.
func rebaseVmdkImages(r vmdkRebase) (vmdkRebaseResult, error) {
	var res vmdkRebaseResult
	if r.Top == nil || r.Top.v == nil {
		return res, errcode.New(errcode.Internal, "rebaseVmdk: the top is not a vmdk image")
	}
	parentCID := uint32(vmdk.NoParentCID)
	if r.New != nil {
		if r.New.v == nil {
			return res, errcode.New(errcode.VmdkParentNotVmdk, "the parent of a vmdk image must be a vmdk image, not %s (qemu reads a vmdk's parent as vmdk)", r.New.format)
		}
		parentCID = r.New.v.CID()
	}
	w, err := vmdk.NewWriter(r.Top.v, ImageFile{r.Top.file})
	if err != nil {
		return res, err
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
		return res, err
	}
	if _, err := d.EncodeEmbedded(r.Top.v.DescriptorAreaSize()); err != nil {
		return res, err
	}
	if !r.Unsafe {
		if res, err = copyVmdkDifferences(w, r); err != nil {
			return res, err
		}
		if err := w.Flush(); err != nil {
			return res, err
		}
	}
	if err := w.UpdateDescriptor(update); err != nil {
		return res, err
	}
	return res, w.Flush()
}

// copyVmdkDifferences writes into the top, grain by grain, the old chain's
// bytes wherever the top defines nothing and the new chain reads differently.
func copyVmdkDifferences(w *vmdk.Writer, r vmdkRebase) (vmdkRebaseResult, error) {
	var res vmdkRebaseResult
	v := r.Top.v
	size, gb := v.VirtualSize(), v.GrainSize()
	oldView, newView := commitView(r.Old), commitView(r.NewChain)
	oldBuf, newBuf := make([]byte, gb), make([]byte, gb)
	for off := int64(0); off < size; off += gb {
		k, err := w.Kind(uint64(off / gb))
		if err != nil {
			return res, err
		}
		if k != layer.Unallocated {
			continue
		}
		n := min(gb, size-off)
		if err := oldView.readAt(oldBuf[:n], off); err != nil {
			return res, err
		}
		if err := newView.readAt(newBuf[:n], off); err != nil {
			return res, err
		}
		if bytes.Equal(oldBuf[:n], newBuf[:n]) {
			continue
		}
		if _, err := w.WriteAt(oldBuf[:n], off); err != nil {
			return res, err
		}
		res.GrainsCopied++
		res.BytesCopied += n
		if r.Progress != nil {
			r.Progress(float64(off+n) / float64(size))
		}
	}
	return res, nil
}
