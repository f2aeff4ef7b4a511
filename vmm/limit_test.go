package vmm

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"instarfs/errcode"
)

// gate is a Sandbox whose runs block until the test releases them.
type gate struct {
	started chan struct{} // one send per run that began
	release chan error    // each receive ends one run with that error
	running atomic.Int32
}

func newGate() *gate {
	return &gate{started: make(chan struct{}, 100), release: make(chan error)}
}

func (g *gate) Name() string { return "gate" }

func (g *gate) Start(context.Context, Job) (*Session, error) {
	return nil, errcode.New(errcode.SandboxUnavailable, "the gate has no sessions")
}

func (g *gate) Run(ctx context.Context, job Job) (json.RawMessage, error) {
	g.running.Add(1)
	defer g.running.Add(-1)
	g.started <- struct{}{}
	if err := <-g.release; err != nil {
		return nil, err
	}
	return json.RawMessage(`{}`), nil
}

// waitStarted waits for n runs of g to begin.
func waitStarted(t *testing.T, g *gate, n int) {
	t.Helper()
	for range n {
		select {
		case <-g.started:
		case <-time.After(5 * time.Second):
			t.Fatal("a run that had a free slot did not start")
		}
	}
}

// quiet fails the test if a run of g begins within a short while.
func quiet(t *testing.T, g *gate, why string) {
	t.Helper()
	select {
	case <-g.started:
		t.Fatalf("a run began %s", why)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestLimitWaitsForASlot(t *testing.T) {
	const n = 3
	g := newGate()
	sb := Limit(g, n)
	if sb.Name() != "gate" {
		t.Errorf("Name() = %q, want the wrapped sandbox's", sb.Name())
	}
	done := make(chan error, n+1)
	for range n + 1 {
		go func() {
			_, err := sb.Run(context.Background(), Job{})
			done <- err
		}()
	}
	waitStarted(t, g, n)
	quiet(t, g, "while all slots were taken")
	if r := g.running.Load(); r != n {
		t.Fatalf("%d runs at once, want %d", r, n)
	}
	// A failing run frees its slot as a successful one does.
	g.release <- errcode.New(errcode.WorkerCrashed, "gone")
	waitStarted(t, g, 1)
	if r := g.running.Load(); r != n {
		t.Errorf("%d runs at once, want %d", r, n)
	}
	for range n {
		g.release <- nil
	}
	var failed int
	for range n + 1 {
		if err := <-done; err != nil {
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d runs failed, want 1", failed)
	}
}

func TestLimitWaitHonoursContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want errcode.Code
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, errcode.Cancelled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, errcode.WorkerTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGate()
			sb := Limit(g, 1)
			first := make(chan error, 1)
			go func() {
				_, err := sb.Run(context.Background(), Job{})
				first <- err
			}()
			waitStarted(t, g, 1)
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			_, err := sb.Run(ctx, Job{})
			if errcode.Of(err) != tc.want {
				t.Errorf("a run waiting for a slot ended with %v, want %s", err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("the waiting run took %v to notice its context", d)
			}
			quiet(t, g, "for a run whose context ended while it waited")
			g.release <- nil
			if err := <-first; err != nil {
				t.Errorf("the running job: %v", err)
			}
			// The slot is free again.
			go func() { sb.Run(context.Background(), Job{}) }()
			waitStarted(t, g, 1)
			g.release <- nil
		})
	}
}
