// Package vmmtest is a vmm.Sandbox for tests of the host side (ctl, fs): it
// runs no worker, but answers each run from a table by operation, or from a
// function, counts the runs, and fails in each way a backend can. Like the
// real backends it brokers: a run with a vmm.Broker asks it for the backing
// files its canned chain names (Discover).
//
// Its answers are what a worker would send, so the host decodes and checks
// them as it checks a real worker's: a test can feed the host hostile
// results without a worker that makes them.
package vmmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// Answer is how a run ends.
type Answer struct {
	// Result is the worker's result document.
	Result json.RawMessage
	// Err, when set, ends the run in this error instead: a worker's own
	// error line (an *errcode.Error), or a Failure's.
	Err error
	// Progress is reported to the job, in order, before the run ends.
	Progress []float64
	// Chain is what the worker reads in each member it opens, in order
	// (Describe's n): in a run with a broker it describes them and asks for
	// the backing files they name (Discover) before it answers, and a
	// refusal ends the run as it ends a worker's. A probe's Result may then
	// be nil: it is the chain's description (proto.ChainInfo).
	Chain []proto.Info
}

// Result is the answer of a worker that sends the result doc.
func Result(doc string) Answer { return Answer{Result: json.RawMessage(doc)} }

// Failure is a way a run ends without an answer of the worker's own: a row
// of the outcome table in ARCHITECTURE.md.
type Failure int

// The failures, in the order of the outcome table.
const (
	Violation   Failure = iota + 1 // killed by SIGSYS: SANDBOX_VIOLATION
	Cancelled                      // the context was cancelled: CANCELLED
	Timeout                        // the time ran out: WORKER_TIMEOUT
	BadOutput                      // bad or excessive output: WORKER_PROTOCOL
	Crash                          // exited without a result: WORKER_CRASHED
	Unstartable                    // could not start: SANDBOX_UNAVAILABLE (*vmm.StartError)
)

// Failures lists every Failure.
var Failures = []Failure{Violation, Cancelled, Timeout, BadOutput, Crash, Unstartable}

// Err is the error a backend returns for a run that ends in f.
func (f Failure) Err() error {
	switch f {
	case Violation:
		return errcode.New(errcode.SandboxViolation, "the worker made a forbidden system call (vmmtest)")
	case Cancelled:
		return errcode.New(errcode.Cancelled, "operation cancelled")
	case Timeout:
		return errcode.New(errcode.WorkerTimeout, "the worker did not finish within 10m0s (vmmtest)")
	case BadOutput:
		return errcode.New(errcode.WorkerProtocol, "invalid worker output: not JSON (vmmtest)")
	case Crash:
		return errcode.New(errcode.WorkerCrashed, "the worker exited with status 2 without a result (vmmtest)")
	case Unstartable:
		return &vmm.StartError{Err: syscall.EAGAIN}
	}
	panic("vmmtest: unknown " + f.String())
}

// Answer is the answer of a run that ends in f.
func (f Failure) Answer() Answer { return Answer{Err: f.Err()} }

func (f Failure) String() string {
	names := []string{Violation: "violation", Cancelled: "cancelled", Timeout: "timeout", BadOutput: "bad output", Crash: "crash", Unstartable: "unstartable"}
	if f > 0 && int(f) < len(names) {
		return names[f]
	}
	return fmt.Sprintf("Failure(%d)", int(f))
}

// Sandbox answers runs without a worker. The zero value answers nothing: every
// run fails with INTERNAL, naming the operation no answer was given for.
// Its methods may be called concurrently.
type Sandbox struct {
	mu      sync.Mutex
	answers map[string]Answer
	answer  func(ctx context.Context, job vmm.Job) Answer
	runs    map[string]int
}

var _ vmm.Sandbox = (*Sandbox)(nil)

// New returns a sandbox that answers runs of each operation as answers says.
func New(answers map[string]Answer) *Sandbox {
	s := &Sandbox{}
	for op, a := range answers {
		s.Set(op, a)
	}
	return s
}

// Func returns a sandbox that answers every run with answer's answer.
func Func(answer func(ctx context.Context, job vmm.Job) Answer) *Sandbox {
	return &Sandbox{answer: answer}
}

// Set answers the runs of op from now on with a.
func (s *Sandbox) Set(op string, a Answer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.answers == nil {
		s.answers = map[string]Answer{}
	}
	s.answers[op] = a
}

// Runs returns how many runs of op began, "" for every operation.
func (s *Sandbox) Runs(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if op == "" {
		n := 0
		for _, c := range s.runs {
			n += c
		}
		return n
	}
	return s.runs[op]
}

// Name is the backend's name.
func (s *Sandbox) Name() string { return "vmmtest" }

// Run answers job as a backend would: a context already done ends it as
// CANCELLED or WORKER_TIMEOUT, a job whose descriptors do not match its
// images is INTERNAL, and otherwise the answer for its operation ends it.
func (s *Sandbox) Run(ctx context.Context, job vmm.Job) (json.RawMessage, error) {
	op := job.Request.Op
	s.mu.Lock()
	if s.runs == nil {
		s.runs = map[string]int{}
	}
	s.runs[op]++
	a, ok := s.answers[op]
	answer := s.answer
	s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, Timeout.Err()
		}
		return nil, Cancelled.Err()
	}
	if len(job.Files) != len(job.Request.Images) {
		return nil, errcode.New(errcode.Internal, "job has %d image descriptors for %d images", len(job.Files), len(job.Request.Images))
	}
	switch {
	case answer != nil:
		a = answer(ctx, job)
	case !ok:
		return nil, errcode.New(errcode.Internal, "vmmtest: no answer for a %s run", op)
	}
	for _, p := range a.Progress {
		if job.Progress != nil {
			job.Progress(p)
		}
	}
	if a.Err != nil {
		return nil, a.Err
	}
	if job.Broker != nil && a.Chain != nil {
		return brokered(job, a)
	}
	return a.Result, nil
}

// brokered ends a run with a broker whose answer is a: the worker first asks
// for the members of a.Chain.
func brokered(job vmm.Job, a Answer) (json.RawMessage, error) {
	op := job.Request.Op
	infos, err := Discover(job, func(n int, _ proto.ImageRef, _ *os.File) (proto.Info, error) {
		if n >= len(a.Chain) {
			return proto.Info{}, errcode.New(errcode.Internal, "vmmtest: no description of member #%d of a %s run", n, op)
		}
		return a.Chain[n], nil
	})
	switch {
	case err != nil && op == proto.OpProbe && len(infos) > 0:
		return json.Marshal(proto.ChainInfo{Images: infos, Error: errcode.From(err)})
	case err != nil:
		return nil, Reported(err)
	case a.Result == nil && op == proto.OpProbe:
		return json.Marshal(proto.ChainInfo{Images: infos})
	}
	return a.Result, nil
}

// Start fails: the fake has no sessions.
func (s *Sandbox) Start(context.Context, vmm.Job) (*vmm.Session, error) {
	return nil, &vmm.StartError{Err: errors.New("vmmtest: no sessions")}
}
