package ctl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"instarfs/errcode"
)

// FileID identifies an image file by device and inode, whatever its name.
type FileID struct {
	Dev, Ino uint64
}

// JobFunc runs one operation; it reports progress and stops at a crash-safe
// point when ctx is cancelled.
type JobFunc func(ctx context.Context, progress Progress) (*Envelope, error)

// JobSpec describes a job to start.
type JobSpec struct {
	Operation string   // "rebase" or "commit"
	Image     string   // the image's name, for status, the envelope and the log
	Arguments string   // what was asked, for the log
	Top       FileID   // the image the job was started on
	Members   []FileID // every file the job reads or writes, Top included
	Run       JobFunc
}

// Job is a running or finished operation.
type Job struct {
	spec     JobSpec
	progress atomic.Uint64 // math.Float64bits of the fraction done
	cancel   context.CancelFunc
	done     chan struct{}
	env      *Envelope
	err      error
}

// Wait waits until the job finishes and returns its envelope and error. When
// ctx ends first, Wait cancels the job, still waits for it to stop, and
// returns an error with code CANCELLED.
func (j *Job) Wait(ctx context.Context) (*Envelope, error) {
	select {
	case <-j.done:
	case <-ctx.Done():
		j.cancel()
		<-j.done
	}
	return j.env, j.err
}

// Progress is the fraction of the job done, in [0,1].
func (j *Job) Progress() float64 { return math.Float64frombits(j.progress.Load()) }

// JobManager runs at most one job per chain: a job reserves every file it
// touches, and a job on any of them is refused with CHAIN_BUSY until it ends.
// It keeps, per image, the outcome of the last job for status and result.json.
type JobManager struct {
	// Sandbox names the sandbox backend, for the log.
	Sandbox string
	// Log receives one line per job; nil means logrus's standard logger.
	Log logrus.FieldLogger

	mu      sync.Mutex
	busy    map[FileID]*Job
	running map[FileID]*Job // by Top
	last    map[FileID]lastResult
	wg      sync.WaitGroup
}

type lastResult struct {
	op  string
	env *Envelope
	err error
}

// Start reserves spec's files and runs spec.Run in its own goroutine.
func (m *JobManager) Start(spec JobSpec) (*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.busy == nil {
		m.busy, m.running, m.last = map[FileID]*Job{}, map[FileID]*Job{}, map[FileID]lastResult{}
	}
	for _, id := range append([]FileID{spec.Top}, spec.Members...) {
		if other := m.busy[id]; other != nil {
			return nil, errcode.New(errcode.ChainBusy, "%s of '%s' is running on the same chain; try again when it is done", other.spec.Operation, other.spec.Image)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &Job{spec: spec, cancel: cancel, done: make(chan struct{})}
	m.busy[spec.Top] = j
	for _, id := range spec.Members {
		m.busy[id] = j
	}
	m.running[spec.Top] = j
	m.wg.Add(1)
	go m.run(ctx, j)
	return j, nil
}

func (m *JobManager) run(ctx context.Context, j *Job) {
	defer m.wg.Done()
	start := time.Now()
	env, err := func() (env *Envelope, err error) {
		defer func() {
			if r := recover(); r != nil {
				env, err = nil, errcode.New(errcode.Internal, "%s panicked: %v", j.spec.Operation, r)
			}
		}()
		return j.spec.Run(ctx, func(f float64) {
			if f >= 0 && f <= 1 {
				j.progress.Store(math.Float64bits(f))
			}
		})
	}()
	if err != nil && ctx.Err() != nil && errcode.Code(err) == errcode.Internal {
		err = errcode.New(errcode.Cancelled, "%s was interrupted: %v", j.spec.Operation, err)
	}
	if env == nil {
		if err == nil {
			err = errcode.New(errcode.Internal, "%s returned no result", j.spec.Operation)
		}
		env = Failed(j.spec.Operation, j.spec.Image, err)
	} else if err != nil && env.Error == nil {
		env.Error = &errcode.Error{Code: errcode.Code(err), Message: err.Error()}
	}
	if env.Sandbox == "" {
		env.Sandbox = m.Sandbox
	}
	if env.DurationMS == 0 {
		env.DurationMS = time.Since(start).Milliseconds()
	}
	j.env, j.err = env, err
	m.logJob(j.spec, env, err, time.Since(start))

	m.mu.Lock()
	for id, b := range m.busy {
		if b == j {
			delete(m.busy, id)
		}
	}
	delete(m.running, j.spec.Top)
	m.last[j.spec.Top] = lastResult{op: j.spec.Operation, env: env, err: err}
	m.mu.Unlock()
	j.cancel()
	close(j.done)
}

// Record stores the outcome of an operation that was refused before it could
// start (bad arguments, a missing backing file), so that status and
// result.json explain the refusal, and logs it.
func (m *JobManager) Record(spec JobSpec, err error) *Envelope {
	env := Failed(spec.Operation, spec.Image, err)
	env.Sandbox = m.Sandbox
	m.logJob(spec, env, err, 0)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.last == nil {
		m.busy, m.running, m.last = map[FileID]*Job{}, map[FileID]*Job{}, map[FileID]lastResult{}
	}
	if m.running[spec.Top] == nil {
		m.last[spec.Top] = lastResult{op: spec.Operation, env: env, err: err}
	}
	return env
}

// Busy reports whether a job holds id.
func (m *JobManager) Busy(id FileID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.busy[id] != nil
}

// Status is the one-line state of an image: "idle", "running <op> <n>%",
// "ok <op>" or "failed <op>: <message>". It never waits.
func (m *JobManager) Status(id FileID) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if j := m.running[id]; j != nil {
		return fmt.Sprintf("running %s %d%%", j.spec.Operation, int(j.Progress()*100))
	}
	last, ok := m.last[id]
	switch {
	case !ok:
		return "idle"
	case last.env.Error != nil:
		return fmt.Sprintf("failed %s: %s", last.op, strings.Join(strings.Fields(last.env.Error.Message), " "))
	}
	return "ok " + last.op
}

// Result is the envelope of the last finished job on id, or nil.
func (m *JobManager) Result(id FileID) *Envelope {
	m.mu.Lock()
	defer m.mu.Unlock()
	if last, ok := m.last[id]; ok {
		return last.env
	}
	return nil
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

func (m *JobManager) logJob(spec JobSpec, env *Envelope, err error, d time.Duration) {
	log := m.Log
	if log == nil {
		log = logrus.StandardLogger()
	}
	result := "ok"
	if env.Error != nil {
		result = env.Error.Code
	}
	e := log.WithFields(logrus.Fields{
		"operation": spec.Operation,
		"image":     spec.Image,
		"arguments": spec.Arguments,
		"result":    result,
		"duration":  d.Round(time.Millisecond).String(),
		"sandbox":   m.Sandbox,
	})
	if env.Error != nil {
		e.WithField("error", env.Error.Message).Warn("job failed")
		return
	}
	e.Info("job finished")
}

// IsCancelled reports whether err is the error of an interrupted job.
func IsCancelled(err error) bool {
	var e *errcode.Error
	return errors.As(err, &e) && e.Code == errcode.Cancelled
}
