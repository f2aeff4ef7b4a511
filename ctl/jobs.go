package ctl

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/vmm"
)

// JobFunc runs one operation and returns its result envelope or an error (the
// manager makes the envelope users see of either, with Run); it reports
// progress and stops at a crash-safe point when ctx is cancelled.
type JobFunc func(ctx context.Context, progress Progress) (*Envelope, error)

// JobSpec describes a job to start.
type JobSpec struct {
	Operation string              // "rebase", "commit" or "repair"
	Image     string              // the image's name, for status, the envelope and the log
	Arguments string              // what was asked, for the log
	Top       chainmodel.FileID   // the image the job was started on
	Members   []chainmodel.FileID // every file the job reads or writes, Top included
	// Learns says that Members are not all of them: the job takes the
	// members of Top's chain as it opens them (Reservation), and shows as
	// running once it has taken them all.
	Learns bool
	Run    JobFunc
}

// Job is a running or finished operation.
type Job struct {
	spec      JobSpec
	percent   atomic.Int64 // the whole percent status shows
	changedAt atomic.Int64 // when percent last changed, in Unix nanoseconds
	cancel    context.CancelFunc
	reserved  bool // every file the job uses is reserved (JobManager.mu)
	done      chan struct{}
	env       *Envelope
	err       error
}

// Wait waits until the job finishes and returns its envelope and error. When
// ctx ends first, Wait cancels the job, still waits for it to stop, and
// returns what the job returned: an error with code CANCELLED, or its result
// when it finished before it could stop.
func (j *Job) Wait(ctx context.Context) (*Envelope, error) {
	select {
	case <-j.done:
	case <-ctx.Done():
		j.cancel()
		<-j.done
	}
	return j.env, j.err
}

func (j *Job) setProgress(f float64) {
	if f < 0 || f > 1 {
		return
	}
	if p := int64(f * 100); j.percent.Swap(p) != p {
		j.changedAt.Store(time.Now().UnixNano())
	}
}

// JobManager runs at most one job per chain: a job reserves every file it
// touches, and a job on any of them is refused with CHAIN_BUSY until it ends.
// It keeps, per image, the outcome of the last job or refusal for status and
// result.json, and when each of them last changed.
type JobManager struct {
	// Sandbox is the sandbox the jobs' workers run in, for their envelopes
	// and the log.
	Sandbox vmm.Sandbox
	// Log receives one line per job; nil means logrus's standard logger.
	Log logrus.FieldLogger

	mu      sync.Mutex
	busy    map[chainmodel.FileID]*Job
	running map[chainmodel.FileID]*Job // by Top
	last    map[chainmodel.FileID]lastResult
	changed map[chainmodel.FileID]changeTimes
	wg      sync.WaitGroup
}

type lastResult struct {
	op  string
	env *Envelope
}

// changeTimes says when an image's status and result last changed.
type changeTimes struct {
	status, result time.Time
}

func (m *JobManager) init() {
	if m.busy == nil {
		m.busy, m.running, m.last, m.changed = map[chainmodel.FileID]*Job{}, map[chainmodel.FileID]*Job{}, map[chainmodel.FileID]lastResult{}, map[chainmodel.FileID]changeTimes{}
	}
}

// touch records that the status of ids changed now, and their result too
// when result is set. m.mu is held.
func (m *JobManager) touch(result bool, ids ...chainmodel.FileID) {
	now := time.Now()
	for _, id := range ids {
		c := m.changed[id]
		c.status = now
		if result {
			c.result = now
		}
		m.changed[id] = c
	}
}

// Start reserves spec's files and runs spec.Run in its own goroutine.
func (m *JobManager) Start(spec JobSpec) (*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	for _, id := range append([]chainmodel.FileID{spec.Top}, spec.Members...) {
		if other := m.busy[id]; other != nil {
			return nil, chainBusy(other)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &Job{spec: spec, cancel: cancel, reserved: !spec.Learns, done: make(chan struct{})}
	m.busy[spec.Top] = j
	for _, id := range spec.Members {
		m.busy[id] = j
	}
	m.running[spec.Top] = j
	if j.reserved {
		m.touch(false, append([]chainmodel.FileID{spec.Top}, spec.Members...)...)
	}
	m.wg.Add(1)
	go m.run(ctx, j)
	return j, nil
}

func (m *JobManager) run(ctx context.Context, j *Job) {
	defer m.wg.Done()
	env, err := Run(ctx, j.spec.Operation, j.spec.Image, m.Sandbox, func(ctx context.Context) (env *Envelope, err error) {
		defer func() {
			if r := recover(); r != nil {
				env, err = nil, errcode.New(errcode.Internal, "%s panicked: %v", j.spec.Operation, r)
			}
		}()
		return j.spec.Run(ctx, j.setProgress)
	})
	j.env, j.err = env, err
	m.logJob(j.spec, env)

	m.mu.Lock()
	for id, b := range m.busy {
		if b == j {
			delete(m.busy, id)
			if j.reserved {
				m.touch(false, id)
			}
		}
	}
	delete(m.running, j.spec.Top)
	m.last[j.spec.Top] = lastResult{op: j.spec.Operation, env: env}
	m.touch(true, j.spec.Top)
	m.mu.Unlock()
	j.cancel()
	close(j.done)
}

// Reservation returns what takes the members of the chain of the job
// started on top (a spec with Learns) as its broker opens them: each is
// reserved for the job, or refused with CHAIN_BUSY when another job holds
// it, and then handed to taken (nil for nothing). Once the chain is complete
// the job shows as running, and its files as busy.
func (m *JobManager) Reservation(top chainmodel.FileID, taken func(chainmodel.FileID)) chainmodel.Reservation {
	return &reservation{m: m, top: top, taken: taken}
}

type reservation struct {
	m     *JobManager
	top   chainmodel.FileID
	taken func(chainmodel.FileID)
}

func (r *reservation) Take(id chainmodel.FileID) error {
	m := r.m
	m.mu.Lock()
	j := m.running[r.top]
	switch other := m.busy[id]; {
	case j == nil:
		m.mu.Unlock()
		return errcode.New(errcode.Internal, "no job runs on the image whose chain holds %v", id)
	case other != nil && other != j:
		m.mu.Unlock()
		return chainBusy(other)
	}
	m.busy[id] = j
	if j.reserved {
		m.touch(false, id)
	}
	m.mu.Unlock()
	if r.taken != nil {
		r.taken(id)
	}
	return nil
}

func (r *reservation) Complete() {
	m := r.m
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.running[r.top]
	if j == nil || j.reserved {
		return
	}
	j.reserved = true
	for id, b := range m.busy {
		if b == j {
			m.touch(false, id)
		}
	}
}

// Record stores the outcome of an operation that was refused before it could
// start (bad arguments, a missing backing file, a busy chain), so that status
// and result.json of the image written to explain the refusal, and logs it.
// A job running on the image goes on; its result replaces the refusal when it
// ends.
func (m *JobManager) Record(spec JobSpec, err error) *Envelope {
	refused := func(context.Context) (*Envelope, error) { return nil, err }
	env, _ := Run(context.Background(), spec.Operation, spec.Image, m.Sandbox, refused)
	m.logJob(spec, env)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	m.last[spec.Top] = lastResult{op: spec.Operation, env: env}
	m.touch(true, spec.Top)
	return env
}

// BusyError is the CHAIN_BUSY error for a job on id, or nil when no job holds
// id.
func (m *JobManager) BusyError(id chainmodel.FileID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if j := m.busy[id]; j != nil {
		return chainBusy(j)
	}
	return nil
}

func chainBusy(j *Job) error {
	return errcode.New(errcode.ChainBusy, "%s of '%s' is running on the same chain; try again when it is done", j.spec.Operation, j.spec.Image)
}

// Status is the one-line state of an image: "idle", "running <op> <n>%",
// "busy: <op> of <image>" (a job on another image of its chain uses it),
// "ok <op>" or "failed <op>: <CODE>: <message>". It never waits.
func (m *JobManager) Status(id chainmodel.FileID) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	// A job that still learns its chain shows as what it replaces.
	if j := m.running[id]; j != nil && j.reserved {
		return fmt.Sprintf("running %s %d%%", j.spec.Operation, j.percent.Load())
	}
	if j := m.busy[id]; j != nil && j.reserved {
		return fmt.Sprintf("busy: %s of %s", j.spec.Operation, j.spec.Image)
	}
	last, ok := m.last[id]
	switch {
	case !ok:
		return "idle"
	case last.env.Error != nil:
		// Messages of the parsers name the command already.
		msg := strings.TrimPrefix(last.env.Error.Message, last.op+": ")
		return fmt.Sprintf("failed %s: %s: %s", last.op, last.env.Error.Code, strings.Join(strings.Fields(msg), " "))
	}
	return "ok " + last.op
}

// Changed says when Status(id) and Result(id) last changed; zero times when
// they have not changed since the manager was made.
func (m *JobManager) Changed(id chainmodel.FileID) (status, result time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.changed[id]
	if j := m.running[id]; j != nil && j.reserved {
		if t := time.Unix(0, j.changedAt.Load()); t.After(c.status) {
			c.status = t
		}
	}
	return c.status, c.result
}

// Result is the envelope of the last finished job or refusal on id, or nil.
func (m *JobManager) Result(id chainmodel.FileID) *Envelope {
	m.mu.Lock()
	defer m.mu.Unlock()
	if last, ok := m.last[id]; ok {
		return last.env
	}
	return nil
}

// WaitFree waits until no job holds id, or ctx ends.
func (m *JobManager) WaitFree(ctx context.Context, id chainmodel.FileID) error {
	for {
		m.mu.Lock()
		j := m.busy[id]
		m.mu.Unlock()
		if j == nil {
			return nil
		}
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// CancelAll cancels every running job and waits for them to stop.
func (m *JobManager) CancelAll() {
	m.mu.Lock()
	for _, j := range m.running {
		j.cancel()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *JobManager) logJob(spec JobSpec, env *Envelope) {
	log := m.Log
	if log == nil {
		log = logrus.StandardLogger()
	}
	result := "ok"
	if env.Error != nil {
		result = string(env.Error.Code)
	}
	e := log.WithFields(logrus.Fields{
		"operation": spec.Operation,
		"image":     spec.Image,
		"arguments": spec.Arguments,
		"result":    result,
		"duration":  (time.Duration(env.DurationMS) * time.Millisecond).String(),
		"sandbox":   env.Sandbox,
	})
	if env.Error != nil {
		e.WithField("error", env.Error.Message).Warn("job failed")
		return
	}
	e.Info("job finished")
}
