package ctl

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
)

// RepairReport is the outcome of `check -r` on one image.
type RepairReport struct {
	Filename string
	Format   string
	proto.RepairResult
}

// Repair opens path alone, read-write and locked as qemu locks an image it
// writes, and asks a worker to repair it as `qemu-img check -r mode` does
// (mode "leaks" or "all").
func Repair(ctx context.Context, o *Opener, path, format, mode string) (*RepairReport, error) {
	return repair(ctx, o, path, format, mode, nil)
}

// repair is Repair of an image that must have the identity want, when set.
func repair(ctx context.Context, o *Opener, path, format, mode string, want *chainmodel.FileID) (*RepairReport, error) {
	if mode != "leaks" && mode != "all" {
		return nil, errcode.New(errcode.BadArguments, "check: -r: unknown mode %q (leaks or all)", mode)
	}
	c, res, err := o.runChain(ctx, path, chainJob{
		op:   proto.OpRepair,
		args: proto.RepairArgs{Mode: mode},
		opts: OpenOptions{Format: format, NoBacking: true, Writable: true, Want: want},
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	r := &RepairReport{Filename: c.Top().Name, Format: c.Top().Info.Format}
	if err := DecodeResult(res, &r.RepairResult); err != nil {
		return nil, err
	}
	if r.LeaksFixed < 0 || r.CorruptionsFixed < 0 || (r.Final != nil) != (r.LeaksFixed+r.CorruptionsFixed > 0) {
		return nil, errcode.New(errcode.WorkerProtocol, "worker reported inconsistent repair counts")
	}
	for _, cr := range []*proto.CheckResult{&r.Pass, r.Final} {
		if cr != nil && !validCounts(*cr) {
			return nil, errcode.New(errcode.WorkerProtocol, "worker reported a negative check count")
		}
	}
	return r, nil
}

// Messages are the lines qemu-img prints on stderr: the repairing check's,
// then the second check's.
func (r *RepairReport) Messages() []string {
	m := r.Pass.Messages
	if r.Final != nil {
		m = append(m[:len(m):len(m)], r.Final.Messages...)
	}
	return m
}

// Err is the error qemu-img fails with after the messages, or nil:
// REPAIR_NEEDS_REBUILD when -r leaks met a refcount structure that only
// -r all can repair.
func (r *RepairReport) Err() error {
	if r.NeedsRebuild {
		return errcode.New(errcode.RepairNeedsRebuild, "Check failed: Input/output error: the refcount structure of '%s' must be rebuilt, which only check -r all does", r.Filename)
	}
	return nil
}

// final is the report qemu-img prints: the second check when something was
// repaired, else the repairing one.
func (r *RepairReport) final() *CheckReport {
	cr := r.Pass
	if r.Final != nil {
		cr = *r.Final
	}
	return &CheckReport{Filename: r.Filename, Format: r.Format, CheckResult: cr}
}

// ExitCode is qemu-img check -r's exit status, from the final report.
func (r *RepairReport) ExitCode() int {
	if r.NeedsRebuild {
		return 1
	}
	return r.final().ExitCode()
}

// Human renders the outcome as qemu-img check -r does on stdout.
func (r *RepairReport) Human() []byte {
	var b bytes.Buffer
	if r.Final != nil {
		fmt.Fprintf(&b, "The following inconsistencies were found and repaired:\n\n    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n", r.LeaksFixed, r.CorruptionsFixed)
	}
	b.Write(r.final().Human())
	return b.Bytes()
}

// JSON renders the outcome as qemu-img check -r --output=json does.
func (r *RepairReport) JSON() []byte {
	return r.final().json(r.LeaksFixed, r.CorruptionsFixed)
}

// validCounts reports whether no count of cr is negative.
func validCounts(cr proto.CheckResult) bool {
	for _, n := range []int64{cr.CheckErrors, cr.Corruptions, cr.Leaks, cr.ImageEndOffset, cr.TotalClusters, cr.AllocatedClusters, cr.FragmentedClusters, cr.CompressedClusters} {
		if n < 0 {
			return false
		}
	}
	return true
}

// ParseRepair parses what was written to a repair control file: the mode,
// leaks or all, as one word. No prefix of either is a mode, so a write split
// in two never runs the wrong repair.
func ParseRepair(line string) (string, error) {
	words, err := splitWords(line)
	if err != nil {
		return "", err
	}
	if len(words) != 1 || (words[0].s != "leaks" && words[0].s != "all") {
		return "", badArgs("repair: write leaks or all (got %s)", QuoteWord(strings.TrimRight(line, "\n")))
	}
	return words[0].s, nil
}

// RepairRequest is what a repair control file asks for.
type RepairRequest struct {
	Mode   string // leaks or all
	Format string
	// Top, when set, is the identity the image must have (the mount's node
	// for it).
	Top *chainmodel.FileID
}

// RepairImage runs check -r on the image at path for a control file and
// returns the result envelope: what was fixed, what the final check still
// finds. A format without checks is REPAIR_UNSUPPORTED; a check that failed
// is an error too. Run makes the envelope users see of the result or the
// error.
func RepairImage(ctx context.Context, o *Opener, path string, req RepairRequest) (*Envelope, error) {
	r, err := repair(ctx, o, path, req.Format, req.Mode, req.Top)
	if err != nil {
		return nil, err
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	if !r.Pass.Supported {
		return nil, errcode.New(errcode.RepairUnsupported, "'%s' is a %s image, which has no repairs", path, r.Format)
	}
	f := r.final()
	if f.CheckErrors > 0 {
		return nil, errcode.New(errcode.Qcow2Corrupt, "Check failed: %d internal errors occurred during the check of '%s'", f.CheckErrors, path)
	}
	return &Envelope{
		Operation:        "repair",
		Image:            path,
		Format:           r.Format,
		Mode:             req.Mode,
		LeaksFixed:       &r.LeaksFixed,
		CorruptionsFixed: &r.CorruptionsFixed,
		Leaks:            &f.Leaks,
		Corruptions:      &f.Corruptions,
	}, nil
}
