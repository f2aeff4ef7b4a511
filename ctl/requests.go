package ctl

import (
	"slices"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
)

// RebaseRequest is what `instarfs rebase` and a write to a mounted image's
// rebase control file ask for; the arguments of qemu-img rebase without FILE.
type RebaseRequest struct {
	Backing       string // -b; "" detaches
	BackingFormat string // -F; "" to detect (never raw)
	Format        string // -f; "" to detect
	Unsafe        bool   // -u
	// Top, when set, is the identity FILE must have (the mount's node for it).
	Top *chainmodel.FileID
	// Reservation, when set, takes each member of FILE's chain as the
	// worker asks for it (OpenOptions.Reservation).
	Reservation chainmodel.Reservation
}

// CommitRequest is what `instarfs commit` and a write to a mounted image's
// commit control file ask for; the arguments of qemu-img commit without FILE.
type CommitRequest struct {
	Base   string // -b; "" for the immediate backing file
	Format string // -f
	Drop   bool   // -d: leave FILE unchanged (implied by Base)
	Rate   int64  // -r: bytes per second, 0 for no limit
	Cache  string // -t: none, writeback, writethrough, directsync, unsafe
	// Top, when set, is the identity FILE must have (the mount's node for it).
	Top *chainmodel.FileID
	// Reservation, when set, takes each member of FILE's chain as the
	// worker asks for it (OpenOptions.Reservation).
	Reservation chainmodel.Reservation
}

// Validate refuses what no rebase can do, before any file is opened: an
// unknown format, or a new backing name that is too long or can never name an
// image file. The command line and control files both reach it through
// Rebase; their parsers check only their own syntax.
func (r RebaseRequest) Validate() error {
	for _, f := range []string{r.Format, r.BackingFormat} {
		if f != "" && !proto.Format(f).Valid() {
			return errcode.New(errcode.UnknownFormat, "Invalid format name: '%s'", f)
		}
	}
	if len(r.Backing) > chainmodel.MaxBackingName {
		return errcode.New(errcode.BackingNameTooLong, "backing file name is %d bytes, longer than %d", len(r.Backing), chainmodel.MaxBackingName)
	}
	return CheckImageName("rebase", "-b", r.Backing)
}

// Validate refuses what no commit can do, before any file is opened: an
// unknown cache mode or a negative rate. The command line and control files
// both reach it through Commit.
func (r CommitRequest) Validate() error {
	if r.Cache != "" && !slices.Contains(proto.CacheModes, r.Cache) {
		return errcode.New(errcode.BadArguments, "commit: unknown cache mode %q", r.Cache)
	}
	if r.Rate < 0 {
		return errcode.New(errcode.BadArguments, "commit: negative rate limit")
	}
	return nil
}

// Progress receives an operation's progress in [0,1]; it may be nil.
type Progress func(float64)
