package vmm

import (
	"context"
	"encoding/json"
)

// Limit returns a Sandbox that runs at most n workers of sb at a time: a
// further Run waits for one of them to end, or for its ctx, whichever comes
// first (then it fails as a cancelled or timed-out run does: CANCELLED or
// WORKER_TIMEOUT). n < 1 is taken as 1. Sessions (Start) are not counted.
func Limit(sb Sandbox, n int) Sandbox {
	return &limited{sb: sb, slots: make(chan struct{}, max(n, 1))}
}

type limited struct {
	sb    Sandbox
	slots chan struct{}
}

func (l *limited) Name() string { return l.sb.Name() }

func (l *limited) Run(ctx context.Context, job Job) (json.RawMessage, error) {
	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, contextError(ctx.Err())
	}
	defer func() { <-l.slots }()
	return l.sb.Run(ctx, job)
}

// Start passes through without taking a slot: a session's worker lives long,
// and would hold the slot that runs (probes, jobs) need for all that time.
// Sessions are bounded by their owner (the disk view's --disk-workers).
func (l *limited) Start(ctx context.Context, job Job) (*Session, error) {
	return l.sb.Start(ctx, job)
}
