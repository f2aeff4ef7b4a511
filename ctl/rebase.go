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
