package ctl

import (
	"context"
	"encoding/json"
	"time"

	"instarfs/errcode"
	"instarfs/vmm"
)

// Envelope is the result of one operation (rebase, commit): what `--output=json`
// prints and what a mounted image's result.json holds. Fields that do not apply
// to an operation are omitted.
type Envelope struct {
	Operation string `json:"operation"`
	Image     string `json:"image"`
	Format    string `json:"format,omitempty"`
	Mode      string `json:"mode,omitempty"` // rebase: "safe" or "unsafe"; repair: "leaks" or "all"

	// rebase
	NewBacking       *string `json:"new_backing,omitempty"`
	NewBackingFormat string  `json:"new_backing_format,omitempty"`
	Detached         bool    `json:"detached,omitempty"`
	ClustersCopied   *int64  `json:"clusters_copied,omitempty"`
	BytesCopied      *int64  `json:"bytes_copied,omitempty"`

	// commit
	Backing                *string `json:"backing,omitempty"`
	BackingFormat          string  `json:"backing_format,omitempty"`
	ClustersCommitted      *int64  `json:"clusters_committed,omitempty"`
	BytesCommitted         *int64  `json:"bytes_committed,omitempty"`
	OverlayClustersCleared *int64  `json:"overlay_clusters_cleared,omitempty"`

	// repair: what was fixed, and what the final check still finds
	LeaksFixed       *int64 `json:"leaks_fixed,omitempty"`
	CorruptionsFixed *int64 `json:"corruptions_fixed,omitempty"`
	Leaks            *int64 `json:"leaks,omitempty"`
	Corruptions      *int64 `json:"corruptions,omitempty"`
	// Warnings are what went through but deserves attention (a new backing
	// file that does not exist yet); the command line prints them on stderr.
	Warnings []string `json:"warnings,omitempty"`

	DurationMS int64          `json:"duration_ms"`
	Sandbox    string         `json:"sandbox,omitempty"`
	Accel      string         `json:"accel,omitempty"` // a microvm's: kvm or tcg
	Error      *errcode.Error `json:"error,omitempty"`
}

// JSON renders the envelope as one line of JSON.
func (e *Envelope) JSON() []byte {
	b, _ := json.Marshal(e)
	return append(b, '\n')
}

// Run runs the operation op (rebase, commit or repair) on image with sandbox sb
// and returns the envelope users see, and the error. It is the one place where
// an operation's outcome becomes its envelope: run's envelope when it
// succeeds, an envelope reporting the error when it fails, either with the
// duration and the sandbox. An INTERNAL error after ctx ended means the
// operation was interrupted: it is CANCELLED.
func Run(ctx context.Context, op, image string, sb vmm.Sandbox, run func(context.Context) (*Envelope, error)) (*Envelope, error) {
	start := time.Now()
	env, err := run(ctx)
	switch {
	case err != nil && ctx.Err() != nil && errcode.Of(err) == errcode.Internal:
		err = errcode.New(errcode.Cancelled, "%s was interrupted: %v", op, err)
	case err == nil && env == nil:
		err = errcode.New(errcode.Internal, "%s returned no result", op)
	}
	if err != nil {
		env = Failed(op, image, err)
	}
	env.DurationMS = time.Since(start).Milliseconds()
	if sb != nil {
		env.Sandbox, env.Accel = sb.Name(), vmm.Accelerator(sb)
	}
	return env, err
}

// Failed returns an envelope reporting err for operation op on image: what an
// operation that failed, or was refused before it ran, prints.
func Failed(op, image string, err error) *Envelope {
	return &Envelope{Operation: op, Image: image, Error: errcode.From(err)}
}
