package ctl

import "instarfs/chainmodel"

// RebaseRequest is what `instarfs rebase` and a write to a mounted image's
// rebase control file ask for; the arguments of qemu-img rebase without FILE.
type RebaseRequest struct {
	Backing       string // -b; "" detaches
	BackingFormat string // -F; "" to detect (never raw)
	Format        string // -f; "" to detect
	Unsafe        bool   // -u
	// Top, when set, is the identity FILE must have (the mount's node for it).
	Top *chainmodel.FileID
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
}

// Progress receives an operation's progress in [0,1]; it may be nil.
type Progress func(float64)
