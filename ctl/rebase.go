package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// Rebase changes the backing file of the image at path, as `qemu-img rebase`
// does (see docs/rebase.md).
//
// Safe mode opens path's whole chain with the top writable, and the new
// backing file's chain read-only; unsafe mode (req.Unsafe) opens path alone,
// and the new backing file only when its format must be detected or path is
// a vmdk image. The new
// backing name is resolved relative to path's directory and opened under
// o.Policy (a refused name is never opened); it is written to the header
// verbatim. A worker does the rest. It returns the result envelope, or an
// error; Run makes the envelope users see of either.
func Rebase(ctx context.Context, o *Opener, path string, req RebaseRequest, progress Progress) (*Envelope, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if req.Backing == "" {
		// Detaching names no backing file, so no format: qemu-img ignores
		// -F then, and so does instarfs.
		req.BackingFormat = ""
	}
	if len(req.Backing) > chainmodel.MaxBackingName {
		return nil, errcode.New(errcode.BackingNameTooLong, "backing file name is %d bytes, longer than %d", len(req.Backing), chainmodel.MaxBackingName)
	}
	if err := CheckImageName("rebase", "-b", req.Backing); err != nil {
		return nil, err
	}
	if !vmm.Brokers(o.Sandbox) {
		return rebaseOpened(ctx, o, path, req, progress)
	}
	var warnings []string
	if loc, ok := o.Policy.Place(path); ok && req.Backing != "" {
		// Never write a name the policy would refuse to open.
		dir := filepath.Dir(loc.Path())
		if err := o.Policy.Admit(dir, req.Backing); err != nil {
			return nil, err
		}
		if req.Unsafe && missing(o.Policy, dir, req.Backing) {
			warnings = append(warnings, missingWarning(req.Backing))
		}
	}
	c, res, err := o.runChain(ctx, path, chainJob{
		op:         proto.OpRebase,
		args:       proto.RebaseArgs{Unsafe: req.Unsafe, Backing: req.Backing, BackingFormat: req.BackingFormat},
		opts:       OpenOptions{Format: req.Format, Writable: true, NoBacking: req.Unsafe, Want: req.Top, Reservation: req.Reservation},
		newBacking: req.Backing,
		newFormat:  req.BackingFormat,
		progress:   progress,
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return rebaseEnvelope(path, c.Top(), req, res, warnings)
}

// rebaseOpened is rebase for a sandbox that does not broker: the host opens
// both chains first, probing each member, and hands them to the worker.
func rebaseOpened(ctx context.Context, o *Opener, path string, req RebaseRequest, progress Progress) (*Envelope, error) {
	c, err := o.OpenChain(ctx, path, OpenOptions{Format: req.Format, Writable: true, NoBacking: req.Unsafe, Want: req.Top})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	top := c.Top()
	if req.Backing != "" {
		// Never write a name the policy would refuse to open.
		if err := o.Policy.Admit(top.Dir(), req.Backing); err != nil {
			return nil, err
		}
	}

	refs := []proto.ImageRef{top.Ref(true)}
	files := []*os.File{top.File}
	args := proto.RebaseArgs{Unsafe: req.Unsafe, Backing: req.Backing, BackingFormat: req.BackingFormat, NewInOld: -1}
	if !req.Unsafe {
		for _, im := range c.Images[1:] {
			refs = append(refs, im.Ref(false))
			files = append(files, im.File)
		}
		args.OldCount = len(c.Images) - 1
	}

	// The new backing file is opened in safe mode, and in unsafe mode when
	// its format must be detected or when the overlay is a vmdk image (whose
	// descriptor records the parent's CID). In unsafe mode it is first looked
	// at (lookAtNewBacking).
	var warnings []string
	if req.Backing != "" && req.Unsafe {
		w, err := lookAtNewBacking(ctx, o, c, req)
		if err != nil {
			return nil, err
		}
		warnings = w
	}
	if req.Backing != "" && (!req.Unsafe || req.BackingFormat == "" || top.Info.Format == "vmdk") {
		probe := req
		vmdkUnsafe := req.Unsafe && top.Info.Format == "vmdk"
		if vmdkUnsafe {
			// Only the parent's CID is wanted: detect its format and let
			// the worker judge it against -F.
			probe.BackingFormat = ""
		}
		nc, inOld, err := openNewBacking(ctx, o, c, probe)
		switch {
		case err != nil && vmdkUnsafe && req.BackingFormat != "":
			nc, inOld, err = nil, -1, nil // the worker decides without it
		case err != nil:
			if req.Unsafe && req.BackingFormat == "" {
				return nil, errcode.New(errcode.BackingFormatRequired, "the format of '%s' cannot be detected (%v); name it with -F", req.Backing, err)
			}
			return nil, err
		}
		if nc != nil {
			defer nc.Close()
			for _, im := range nc.Images {
				refs = append(refs, im.Ref(false))
				files = append(files, im.File)
			}
		}
		args.NewInOld = inOld
	}

	raw, _ := json.Marshal(args)
	res, err := o.Sandbox.Run(ctx, vmm.Job{
		Request:  proto.Request{Op: proto.OpRebase, Images: refs, Args: raw},
		Files:    files,
		Progress: progress,
	})
	if err != nil {
		return nil, err
	}
	return rebaseEnvelope(path, top, req, res, warnings)
}

// rebaseEnvelope checks a worker's rebase result and makes the envelope.
func rebaseEnvelope(path string, top *chainmodel.Image, req RebaseRequest, res json.RawMessage, warnings []string) (*Envelope, error) {
	var r proto.RebaseResult
	if err := DecodeResult(res, &r); err != nil {
		return nil, err
	}
	if err := validateRebaseResult(r, req); err != nil {
		return nil, err
	}
	backing := req.Backing
	env := &Envelope{
		Operation:        "rebase",
		Image:            path,
		Format:           top.Info.Format,
		Mode:             r.Mode,
		NewBacking:       &backing,
		NewBackingFormat: r.BackingFormat,
		Detached:         req.Backing == "",
		ClustersCopied:   &r.ClustersCopied,
		BytesCopied:      &r.BytesCopied,
		Warnings:         warnings,
	}
	return env, nil
}

// validateRebaseResult re-checks what an untrusted worker reported.
func validateRebaseResult(r proto.RebaseResult, req RebaseRequest) error {
	bad := func(what string) error {
		return errcode.New(errcode.WorkerProtocol, "worker reported an invalid rebase result: %s", what)
	}
	switch {
	case req.Unsafe && r.Mode != "unsafe", !req.Unsafe && r.Mode != "safe":
		return bad("mode " + r.Mode)
	case r.ClustersCopied < 0 || r.BytesCopied < 0:
		return bad("negative counts")
	case req.Backing == "" && r.BackingFormat != "":
		return bad("a backing format for a detach")
	case req.BackingFormat != "" && r.BackingFormat != req.BackingFormat:
		return bad("backing format " + r.BackingFormat)
	}
	if r.BackingFormat != "" && !proto.Format(r.BackingFormat).Valid() {
		return bad("backing format " + r.BackingFormat)
	}
	return nil
}

// openNewBacking opens the new backing file named by req relative to the
// overlay's directory, under the path policy. When it is already part of the
// overlay's chain (safe mode) it returns that image's index in the old chain
// (0 is the old backing file) and no chain. Otherwise it returns the new
// backing file's chain (just the file in unsafe mode), probed with -F or, when
// -F is omitted, with its format detected (never raw).
func openNewBacking(ctx context.Context, o *Opener, c *chainmodel.Chain, req RebaseRequest) (*chainmodel.Chain, int, error) {
	top := c.Top()
	f, loc, st, err := o.Policy.OpenName(top.Dir(), req.Backing)
	if err != nil {
		return nil, -1, err
	}
	if chainmodel.IDOf(&st) == top.ID() {
		f.Close()
		return nil, -1, ontoItself(top.Name, req.Backing)
	}
	if !req.Unsafe {
		for i, im := range c.Images[1:] {
			if im.ID() == chainmodel.IDOf(&st) {
				f.Close()
				if req.BackingFormat != "" && req.BackingFormat != im.Info.Format {
					return nil, -1, errcode.New(errcode.FormatMismatch, "'%s' is a %s image, not %s", req.Backing, im.Info.Format, req.BackingFormat)
				}
				return nil, i, nil
			}
		}
	}
	name := chainmodel.FullBackingName(top.Name, req.Backing)
	nc, err := openChainFrom(ctx, o, f, name, loc, req.BackingFormat, req.Unsafe, top.ID())
	if err != nil {
		return nil, -1, err
	}
	return nc, -1, nil
}

// openChainFrom builds the chain of an image already opened (read-only) under
// the policy: it probes it with format (detected, never raw, when empty) and,
// unless alone, opens and probes each backing file below it the way
// Opener.OpenChain does. The overlay (identified by overlay) must not appear
// in it.
func openChainFrom(ctx context.Context, o *Opener, f *os.File, name string, loc chainmodel.Loc, format string, alone bool, overlay chainmodel.FileID) (*chainmodel.Chain, error) {
	c := &chainmodel.Chain{}
	fail := func(err error) (*chainmodel.Chain, error) {
		c.Close()
		return nil, err
	}
	seen := map[chainmodel.FileID]bool{overlay: true}
	for {
		detect := format == ""
		info, st, err := o.Probe(ctx, f, name, format, false)
		if err != nil {
			f.Close()
			if detect && errcode.Of(err) == errcode.FormatNotDetected {
				err = errcode.New(errcode.RawNotInferred, "'%s' is not qcow2 or vmdk; raw is never inferred, name it with -F raw", name)
			}
			return fail(err)
		}
		id := chainmodel.IDOf(&st)
		switch {
		case id == overlay:
			f.Close()
			return fail(errcode.New(errcode.RebaseCreatesLoop, "'%s' is an overlay of the image being rebased: its backing chain reaches that image as '%s', so the chain would loop", c.Images[0].Name, name))
		case seen[id]:
			f.Close()
			return fail(errcode.New(errcode.BackingChainLoop, "backing file '%s' is already in the chain", name))
		}
		seen[id] = true
		if err := chainmodel.LockImage(f, name, false); err != nil {
			f.Close()
			return fail(err)
		}
		im := &chainmodel.Image{Name: name, Loc: loc, File: f, Info: info, Stat: st}
		c.Images = append(c.Images, im)
		if alone || info.BackingFilename == "" {
			return c, nil
		}
		if len(c.Images) > chainmodel.MaxDepth {
			return fail(errcode.New(errcode.BackingChainTooDeep, "the backing chain of '%s' is deeper than %d", c.Images[0].Name, chainmodel.MaxDepth))
		}
		next := info.BackingFilename
		if f, loc, _, err = o.Policy.OpenName(im.Dir(), next); err != nil {
			return fail(err)
		}
		name = chainmodel.FullBackingName(im.Name, next)
		format = info.BackingFilenameFormat
	}
}

func ontoItself(image, backing string) error {
	return errcode.New(errcode.RebaseCreatesLoop, "'%s' is '%s' itself: an image cannot be its own backing file", backing, image)
}

// lookAtNewBacking checks, for an unsafe rebase that does not read the new
// backing file, that the name can still work: a name that does not exist yet
// is written with a warning (qemu-img allows it: files are often moved into
// place afterwards); one that exists must be a file the policy opens, neither
// the image itself nor one of its overlays.
func lookAtNewBacking(ctx context.Context, o *Opener, c *chainmodel.Chain, req RebaseRequest) ([]string, error) {
	top := c.Top()
	f, loc, st, err := o.Policy.OpenName(top.Dir(), req.Backing)
	if err != nil {
		if missing(o.Policy, top.Dir(), req.Backing) {
			return []string{missingWarning(req.Backing)}, nil
		}
		return nil, err
	}
	if chainmodel.IDOf(&st) == top.ID() {
		f.Close()
		return nil, ontoItself(top.Name, req.Backing)
	}
	// The images below it are looked at only to find a loop; anything else
	// wrong there is not this rebase's concern, as the data is not read.
	nc, err := openChainFrom(ctx, o, f, chainmodel.FullBackingName(top.Name, req.Backing), loc, req.BackingFormat, false, top.ID())
	if errcode.Of(err) == errcode.RebaseCreatesLoop {
		return nil, err
	}
	if err == nil {
		nc.Close()
	}
	return nil, nil
}

// missing reports whether name, resolved against dir, is a name the policy
// allows that does not exist (yet).
func missing(p chainmodel.Policy, dir, name string) bool {
	loc, err := p.Locate(dir, name)
	if err != nil {
		return false
	}
	_, err = os.Stat(loc.Path())
	return errors.Is(err, fs.ErrNotExist)
}

func missingWarning(name string) string {
	return fmt.Sprintf("backing file '%s' does not exist; the name was written anyway (unsafe mode), and the image cannot be opened until it exists", name)
}
