package ctl

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/vmm/vmmtest"
)

// blockingJob runs until released or cancelled, reporting half progress.
func blockingJob(release <-chan struct{}) JobFunc {
	return func(ctx context.Context, progress Progress) (*Envelope, error) {
		progress(0.5)
		select {
		case <-release:
			return &Envelope{Operation: "rebase", Image: "a"}, nil
		case <-ctx.Done():
			return nil, errcode.New(errcode.Cancelled, "interrupted")
		}
	}
}

func TestJobManager(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.InfoLevel)
	m := &JobManager{Sandbox: vmmtest.New(nil), Log: log}
	a, b, c := chainmodel.FileID{Dev: 1, Ino: 1}, chainmodel.FileID{Dev: 1, Ino: 2}, chainmodel.FileID{Dev: 1, Ino: 3}
	if s := m.Status(a); s != "idle" {
		t.Fatalf("status before any job: %q", s)
	}
	release := make(chan struct{})
	j, err := m.Start(JobSpec{Operation: "rebase", Image: "a", Top: a, Members: []chainmodel.FileID{a, b}, Run: blockingJob(release)})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for m.Status(a) != "running rebase 50%" && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s := m.Status(a); s != "running rebase 50%" {
		t.Errorf("status while running: %q", s)
	}
	// The other images of the chain say which job uses them.
	if s := m.Status(b); s != "busy: rebase of a" {
		t.Errorf("status of a member while running: %q", s)
	}
	if st, _ := m.Changed(b); st.IsZero() {
		t.Errorf("a member's status time did not change when the job started")
	}
	before, _ := m.Changed(a)
	// Any image of the chain is busy; another chain is not.
	for _, top := range []chainmodel.FileID{a, b} {
		if _, err := m.Start(JobSpec{Operation: "commit", Image: "x", Top: top, Run: blockingJob(nil)}); errcode.Of(err) != errcode.ChainBusy || !strings.Contains(err.Error(), "rebase of 'a'") {
			t.Errorf("second job on %v: %v, want CHAIN_BUSY naming rebase of 'a'", top, err)
		}
		if err := m.BusyError(top); errcode.Of(err) != errcode.ChainBusy {
			t.Errorf("BusyError(%v) = %v", top, err)
		}
	}
	// A refusal on a member is recorded; the busy state still shows.
	m.Record(JobSpec{Operation: "commit", Image: "b", Top: b}, m.BusyError(b))
	if s := m.Status(b); s != "busy: rebase of a" {
		t.Errorf("status of a member after a refusal: %q", s)
	}
	if r := m.Result(b); r == nil || r.Error.Code != errcode.ChainBusy {
		t.Errorf("result of a member after a refusal: %+v", r)
	}
	waitCtx, stopWait := context.WithTimeout(context.Background(), 10*time.Millisecond)
	if err := m.WaitFree(waitCtx, b); err == nil {
		t.Errorf("WaitFree returned while a job holds the file")
	}
	stopWait()
	if err := m.WaitFree(context.Background(), c); err != nil {
		t.Errorf("WaitFree of a free file: %v", err)
	}
	done := make(chan struct{})
	close(done)
	jc, err := m.Start(JobSpec{Operation: "commit", Image: "c", Top: c, Run: blockingJob(done)})
	if err != nil {
		t.Fatalf("job on another chain: %v", err)
	}
	jc.Wait(context.Background())

	close(release)
	if err := m.WaitFree(context.Background(), b); err != nil || m.BusyError(b) != nil {
		t.Errorf("WaitFree: %v", err)
	}
	env, err := j.Wait(context.Background())
	if err != nil || env.Sandbox != "vmmtest" {
		t.Fatalf("Wait: %+v, %v", env, err)
	}
	if s := m.Status(a); s != "ok rebase" {
		t.Errorf("status after success: %q", s)
	}
	if m.BusyError(b) != nil {
		t.Errorf("chain still busy after the job")
	}
	if s := m.Status(b); s != "failed commit: CHAIN_BUSY: rebase of 'a' is running on the same chain; try again when it is done" {
		t.Errorf("status of a member after the job: %q", s)
	}
	if st, rt := m.Changed(a); !st.After(before) || !rt.Equal(st) {
		t.Errorf("times after the job: status %v, result %v; started %v", st, rt, before)
	}

	// Cancelling the waiter cancels the job.
	ctx, cancel := context.WithCancel(context.Background())
	j, err = m.Start(JobSpec{Operation: "rebase", Image: "a", Top: a, Run: blockingJob(nil)})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := j.Wait(ctx); errcode.Of(err) != errcode.Cancelled {
		t.Errorf("Wait after cancel: %v", err)
	}
	if s := m.Status(a); !strings.HasPrefix(s, "failed rebase: CANCELLED: interrupted") {
		t.Errorf("status after cancel: %q", s)
	}
	m.Record(JobSpec{Operation: "commit", Image: "a", Top: a}, errcode.New(errcode.BadArguments, "commit: unknown flag -x"))
	if s := m.Status(a); s != "failed commit: BAD_ARGUMENTS: unknown flag -x" { // the prefix once
		t.Errorf("status after a refusal: %q", s)
	}
	if r := m.Result(a); r == nil || r.Error.Code != errcode.BadArguments {
		t.Errorf("result after a refusal: %+v", r)
	}
	var lines int
	for _, e := range hook.AllEntries() {
		if e.Data["operation"] != nil && e.Data["sandbox"] == "vmmtest" && e.Data["result"] != nil {
			lines++
		}
	}
	if lines != 5 {
		t.Errorf("%d log lines for 5 jobs and refusals", lines)
	}
}

// TestJobReservation: a job that learns its chain (JobSpec.Learns) holds its
// top from the start and each member from when its broker takes it; another
// job's file is refused with CHAIN_BUSY; the job shows as running, and its
// members as busy, once its chain is complete.
func TestJobReservation(t *testing.T) {
	m := &JobManager{Sandbox: vmmtest.New(nil), Log: logrus.New()}
	a, b, c, d := chainmodel.FileID{Dev: 1, Ino: 1}, chainmodel.FileID{Dev: 1, Ino: 2}, chainmodel.FileID{Dev: 1, Ino: 3}, chainmodel.FileID{Dev: 1, Ino: 4}
	releaseD := make(chan struct{})
	defer close(releaseD)
	if _, err := m.Start(JobSpec{Operation: "commit", Image: "d", Top: d, Run: blockingJob(releaseD)}); err != nil {
		t.Fatal(err)
	}
	m.Record(JobSpec{Operation: "rebase", Image: "a", Top: a}, errcode.New(errcode.BadArguments, "earlier"))
	reserved := make(chan chainmodel.Reservation, 1)
	var taken []chainmodel.FileID
	steps := make(chan func(chainmodel.Reservation), 1)
	done := make(chan struct{})
	_, err := m.Start(JobSpec{Operation: "rebase", Image: "a", Top: a, Members: []chainmodel.FileID{a}, Learns: true,
		Run: func(ctx context.Context, _ Progress) (*Envelope, error) {
			r := <-reserved
			for step := range steps {
				step(r)
			}
			close(done)
			return &Envelope{Operation: "rebase", Image: "a"}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	reserved <- m.Reservation(a, func(id chainmodel.FileID) { taken = append(taken, id) })
	step := func(f func(chainmodel.Reservation)) {
		t.Helper()
		ran := make(chan struct{})
		steps <- func(r chainmodel.Reservation) { f(r); close(ran) }
		<-ran
	}
	// The top is held from the start; until the chain is complete, the
	// statuses show what they showed.
	if err := m.BusyError(a); errcode.Of(err) != errcode.ChainBusy {
		t.Errorf("BusyError(top) while the job learns its chain: %v", err)
	}
	if s := m.Status(a); !strings.HasPrefix(s, "failed rebase: BAD_ARGUMENTS") {
		t.Errorf("status of the top while the job learns its chain: %q", s)
	}
	step(func(r chainmodel.Reservation) {
		if err := r.Take(b); err != nil {
			t.Errorf("taking a free member: %v", err)
		}
		if err := r.Take(b); err != nil {
			t.Errorf("taking a member twice: %v", err)
		}
		if err := r.Take(d); errcode.Of(err) != errcode.ChainBusy || !strings.Contains(err.Error(), "commit of 'd'") {
			t.Errorf("taking another job's top: %v, want CHAIN_BUSY naming commit of 'd'", err)
		}
	})
	if len(taken) != 2 || taken[0] != b || taken[1] != b {
		t.Errorf("taken: %v, want b twice", taken)
	}
	if err := m.BusyError(b); errcode.Of(err) != errcode.ChainBusy {
		t.Errorf("BusyError(member) once taken: %v", err)
	}
	if s := m.Status(b); s != "idle" {
		t.Errorf("status of a member before the chain is complete: %q", s)
	}
	step(func(r chainmodel.Reservation) { r.Complete() })
	if s := m.Status(a); s != "running rebase 0%" {
		t.Errorf("status of the top once the chain is complete: %q", s)
	}
	if s := m.Status(b); s != "busy: rebase of a" {
		t.Errorf("status of a member once the chain is complete: %q", s)
	}
	if err := m.BusyError(c); err != nil {
		t.Errorf("BusyError of a file outside the chain: %v", err)
	}
	close(steps)
	<-done
	if err := m.WaitFree(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if s := m.Status(b); s != "idle" {
		t.Errorf("status of a member after the job: %q", s)
	}
}
