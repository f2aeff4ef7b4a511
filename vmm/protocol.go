// Package vmm is the host's side of the sandbox boundary: the Sandbox interface
// the host uses to run a worker, the strict reading of what a worker answers
// (package proto says what that is), and the registry of the backends that
// confine the worker.
//
// The host never parses image bytes. It opens the image files, hands their
// descriptors to a worker through a Sandbox, and decodes the worker's one JSON
// result as untrusted input. The worker side lives in vmm/worker.
package vmm

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"instarfs/proto"
)

// Job is one run of a worker.
type Job struct {
	Request proto.Request
	// Files are the image descriptors, in the order of Request.Images. The
	// caller keeps ownership and closes them.
	Files []*os.File
	// Progress, when set, receives the worker's progress in [0,1].
	Progress func(float64)
	// Timeout bounds the run; zero means DefaultTimeout.
	Timeout time.Duration
	// Shared, for a session, is how many bytes of memory the host shares
	// with the worker for replies (FrameShared); 0 for none.
	Shared int
	// Broker, when set, answers the worker's questions for further images
	// (Run only). The worker may then be handed the top image alone.
	Broker Broker
	// Attach, with a Broker, are files the broker will answer with, known
	// before the worker starts (the probe cache describes the chain): a
	// backend whose worker cannot be handed a file once it runs (microvm)
	// attaches them when it starts it, writable where their Ref says.
	Attach []Attached
}

// Attached is a file a backend attaches up front (Job.Attach).
type Attached struct {
	File *os.File
	Ref  proto.ImageRef
}

// DefaultTimeout bounds a worker run when the job does not set one.
const DefaultTimeout = 10 * time.Minute

// MaxStderrBytes bounds how much of the worker's standard error the host keeps
// for diagnostics.
const MaxStderrBytes = 64 << 10

// Sandbox runs a worker. Run returns the worker's result document, or an error
// carrying an errcode (the worker's own, or WORKER_CRASHED, WORKER_TIMEOUT,
// WORKER_PROTOCOL, SANDBOX_VIOLATION, CANCELLED). Start starts a worker that
// stays up as a Session (see session.go) under the same confinement; the
// job's Timeout is then the session's whole life, counted from its ready
// document.
type Sandbox interface {
	Name() string
	Run(ctx context.Context, job Job) (json.RawMessage, error)
	Start(ctx context.Context, job Job) (*Session, error)
}
