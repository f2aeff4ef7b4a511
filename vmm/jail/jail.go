// Package jail is the default sandbox backend: the worker executable
// (instarfs-worker, see vmm.UseWorker) run in fresh namespaces, on an empty read-only root, under Landlock,
// with no capabilities, resource limits and a seccomp allow-list.
//
// The package has two sides. The host side is Sandbox (and Plain), which start
// the worker; the worker side is Confine, which the worker calls before it reads
// its request or any image byte, and RunProbes, the implementation of
// proto.OpSandboxProbe. SandboxCheck and HostReport back `instarfs sandbox-check`.
//
// The worker must be built with CGO_ENABLED=0: dropping capabilities and
// enforcing Landlock on every thread use syscall.AllThreadsSyscall, which cgo
// binaries do not support.
package jail

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"instarfs/proto"
	"instarfs/vmm"
)

// Environment variables through which the host tells the worker how to confine
// itself. The host sets the worker's whole environment; nothing else reaches it.
const (
	// EnvSandbox is "jail" or "plain". A worker without it refuses to run.
	EnvSandbox = "INSTARFS_SANDBOX"
	// EnvFaultAfterWrites is passed through from the host's environment for the
	// crash-consistency tests.
	EnvFaultAfterWrites = "INSTARFS_FAULT_AFTER_WRITES"

	envNamespaces = "INSTARFS_JAIL_NS"      // "1": fresh namespaces; build the empty root
	envUID        = "INSTARFS_JAIL_UID"     // switch to this uid and gid (no user namespace)
	envSeccomp    = "INSTARFS_JAIL_SECCOMP" // "kill" (default) or "errno" (probe runs)
	envCPU        = "INSTARFS_JAIL_CPU"     // RLIMIT_CPU in seconds
	envImages     = "INSTARFS_JAIL_IMAGES"  // number of image descriptors from proto.FirstImageFD
	envBroker     = "INSTARFS_JAIL_BROKER"  // the broker socket's descriptor, the only one recvmsg may read
)

// Seccomp modes: what the filter does with a system call outside the allow-list.
const (
	SeccompKill  = "kill"  // kill the worker (SIGSYS → SANDBOX_VIOLATION)
	SeccompErrno = "errno" // fail the call with EPERM; only for proto.OpSandboxProbe
)

// Resource limits of a jailed worker (soft = hard).
const (
	LimitNOFILE   = 64      // descriptors: stdio, images (chain depth ≤ 16), runtime
	LimitAS       = 8 << 30 // address space; the Go runtime reserves generously
	LimitFSIZE    = 4 << 40 // largest file the worker may grow
	LimitMEMLOCK  = 0       // no locked memory
	LimitMSGQUEUE = 0       // no POSIX message queues
	LimitCORE     = 0       // no core dumps
	limitCPUSlack = 30      // seconds of CPU on top of timeout × CPUs
	hostname      = "instarfs-worker"
)

// Namespaces created for the worker (plus CLONE_NEWUSER where available).
//
// Not a network namespace: creating one is the dearest part of a worker's
// start (about 0.6 ms in clone and 0.3 ms more when a kernel thread tears it
// down, against 1-2 ms for the whole clone), and for the worker it would only
// repeat what is already denied. The seccomp filter allows no socket, socketpair,
// connect, bind, sendto or sendmsg, so the worker can create and reach no socket
// of any family, and Landlock (ABI 4+) denies TCP bind and connect and (ABI 6+)
// abstract unix sockets besides. The one socket it holds is the broker's
// socketpair, which no namespace would restrict. Programs the jail contains
// without its filter (Contained: the microvm backend's QEMU) get a network
// namespace.
const namespaceFlags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID |
	syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS | syscall.CLONE_NEWCGROUP

// Level is how much isolation the kernel lets the jail set up at spawn time.
// Confinement inside the worker (rlimits, Landlock, capabilities, seccomp) is
// applied at every level.
type Level int

const (
	LevelUnknown Level = iota // not yet decided: the first run tries LevelUserNS
	LevelUserNS               // user+mount+pid+ipc+uts+cgroup namespaces, empty root
	LevelRootNS               // the same without a user namespace (host root only)
	LevelNoNS                 // no namespaces: the worker shares the host's root and pids
)

func (l Level) String() string {
	switch l {
	case LevelUserNS:
		return "user+mount+pid+ipc+uts+cgroup namespaces"
	case LevelRootNS:
		return "mount+pid+ipc+uts+cgroup namespaces, no user namespace"
	case LevelNoNS:
		return "no namespaces"
	}
	return "undecided"
}

// Sandbox is the jail backend. The zero value is ready to use; it is safe for
// concurrent use.
type Sandbox struct {
	// Log receives warnings about missing layers (each once) and the worker's
	// diagnostics. nil means the standard logrus logger.
	Log logrus.FieldLogger

	mu     sync.Mutex
	level  Level // decided on the first run that started
	warned map[string]bool

	// Test hooks.
	started    func(pid int)
	forceLevel Level
	path       string // the worker executable; empty means vmm.UseWorker's
}

// New returns a jail sandbox.
func New() *Sandbox { return &Sandbox{} }

func init() {
	vmm.Register("jail", func() (vmm.Sandbox, error) { return New(), nil })
}

// Name returns "jail".
func (s *Sandbox) Name() string { return "jail" }

// Level returns the isolation level the sandbox settled on, or LevelUnknown
// before its first run.
func (s *Sandbox) Level() Level {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.forceLevel != LevelUnknown {
		return s.forceLevel
	}
	return s.level
}

// Run runs job in a jailed worker. The first run finds the strongest level the
// kernel allows and later runs reuse it; a missing layer is logged once.
func (s *Sandbox) Run(ctx context.Context, job vmm.Job) (json.RawMessage, error) {
	var res json.RawMessage
	err := s.spawn(job, func(p *vmm.Process) (err error) {
		res, err = p.Run(ctx, job)
		return err
	})
	return res, err
}

// Start starts a jailed worker for a session, at the level Run settles on.
func (s *Sandbox) Start(ctx context.Context, job vmm.Job) (*vmm.Session, error) {
	var sess *vmm.Session
	err := s.spawn(job, func(p *vmm.Process) (err error) {
		sess, err = p.Start(ctx, job)
		return err
	})
	return sess, err
}

// spawn calls run with the worker process for job, trying weaker levels while
// the kernel refuses to start it.
func (s *Sandbox) spawn(job vmm.Job, run func(*vmm.Process) error) error {
	level := s.Level()
	if level == LevelUnknown {
		level = LevelUserNS
	}
	for {
		err := s.runAt(level, job, run)
		var se *vmm.StartError
		if !errors.As(err, &se) {
			s.settle(level)
			return err
		}
		next := fallback(level)
		if s.Level() != LevelUnknown || next == LevelUnknown || !namespacesRefused(se.Err) {
			return err
		}
		s.warnOnce(fmt.Sprintf("the kernel refused %s (%v); the worker runs with %s", level, se.Err, next))
		level = next
	}
}

// runAt calls run once with the worker process for job at level. A worker
// started by root runs as a host uid and gid of its own, held until it has
// exited (see workerIDFirst): the process gives it back through its Exited
// hook, which for a session is when the session's worker ends.
func (s *Sandbox) runAt(level Level, job vmm.Job, run func(*vmm.Process) error) error {
	id := -1
	var exited func()
	if os.Geteuid() == 0 {
		id = workerIDs.take()
		var once sync.Once
		exited = func() { once.Do(func() { workerIDs.release(id) }) }
	}
	p := s.process(level, job, id)
	p.Exited = exited
	return run(p)
}

func (s *Sandbox) settle(level Level) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.level == LevelUnknown {
		s.level = level
	}
}

// fallback returns the next weaker level, or LevelUnknown when there is none.
func fallback(l Level) Level {
	switch l {
	case LevelUserNS:
		if os.Geteuid() == 0 {
			return LevelRootNS
		}
		return LevelNoNS
	case LevelRootNS:
		return LevelNoNS
	}
	return LevelUnknown
}

// namespacesRefused reports whether a start error is the kernel refusing the
// namespaces (or the uid mapping), rather than, say, a missing executable.
func namespacesRefused(err error) bool {
	for _, e := range []error{syscall.EPERM, syscall.EACCES, syscall.EINVAL, syscall.ENOSPC, syscall.EUSERS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *Sandbox) logger() logrus.FieldLogger {
	if s.Log != nil {
		return s.Log
	}
	return logrus.StandardLogger()
}

// warnOnce logs msg at warning level the first time this sandbox sees it.
func (s *Sandbox) warnOnce(msg string) {
	s.mu.Lock()
	if s.warned == nil {
		s.warned = map[string]bool{}
	}
	seen := s.warned[msg]
	s.warned[msg] = true
	s.mu.Unlock()
	if !seen {
		s.logger().Warnf("sandbox jail: %s", msg)
	}
}

// process describes the worker for one run at the given level. id is the host
// uid and gid the worker runs as when the host is root, -1 otherwise.
func (s *Sandbox) process(level Level, job vmm.Job, id int) *vmm.Process {
	mode := SeccompKill
	if job.Request.Op == proto.OpSandboxProbe {
		mode = SeccompErrno
	}
	cpu := cpuSeconds(job.Timeout)
	descriptors := len(job.Files) + min(job.Shared, 1)
	env := []string{
		EnvSandbox + "=jail",
		envSeccomp + "=" + mode,
		envCPU + "=" + strconv.Itoa(cpu),
	}
	if job.Broker != nil {
		env = append(env, envBroker+"="+strconv.Itoa(proto.FirstImageFD+descriptors))
		descriptors++
	}
	env = append(env, envImages+"="+strconv.Itoa(descriptors))
	env = append(env, baseEnv()...)
	attr := &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	switch level {
	case LevelUserNS:
		uid, gid := os.Getuid(), os.Getgid()
		if id >= 0 {
			uid, gid = id, id
		}
		attr.Cloneflags = namespaceFlags | syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
		attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
		env = append(env, envNamespaces+"=1")
	case LevelRootNS:
		attr.Cloneflags = namespaceFlags
		env = append(env, envNamespaces+"=1")
		if id >= 0 {
			env = append(env, envUID+"="+strconv.Itoa(id))
		}
	default:
		env = append(env, envNamespaces+"=0")
		if id >= 0 {
			env = append(env, envUID+"="+strconv.Itoa(id))
		}
	}
	return &vmm.Process{
		Path:        s.path,
		Env:         env,
		SysProcAttr: attr,
		Log:         s.logger(),
		Warn:        s.warnOnce,
		Started:     s.started,
		CPULimit:    time.Duration(cpu) * time.Second,
	}
}

// baseEnv is the environment every worker gets: the Go runtime must not keep
// descriptors into the host's cgroup tree nor re-read it (the files are gone
// after the pivot and the reads would be refused); an empty TZ makes the
// worker's local time zone UTC without reading one from the host's files (the
// worker formats no local time); and the fault-injection setting of the tests
// is passed through.
func baseEnv() []string {
	env := []string{"GODEBUG=containermaxprocs=0,updatemaxprocs=0", "TZ="}
	if v, ok := os.LookupEnv(EnvFaultAfterWrites); ok {
		env = append(env, EnvFaultAfterWrites+"="+v)
	}
	return env
}

// cpuSeconds is the worker's CPU limit for a job timeout: the timeout on every
// CPU plus some slack, so that the wall-clock timeout normally fires first.
func cpuSeconds(timeout time.Duration) int {
	if timeout <= 0 {
		timeout = vmm.DefaultTimeout
	}
	return int(timeout.Seconds()*float64(runtime.NumCPU())) + limitCPUSlack
}

// Plain runs the worker executable with no confinement at all.
// It exists for tests and debugging; it is not registered as a --sandbox value.
type Plain struct {
	Log logrus.FieldLogger

	path string // test hook: the worker executable; empty means vmm.UseWorker's
}

// Name returns "plain".
func (p *Plain) Name() string { return "plain" }

// Run runs job in an unconfined worker.
func (p *Plain) Run(ctx context.Context, job vmm.Job) (json.RawMessage, error) {
	return p.process().Run(ctx, job)
}

// Start starts an unconfined worker for a session.
func (p *Plain) Start(ctx context.Context, job vmm.Job) (*vmm.Session, error) {
	return p.process().Start(ctx, job)
}

func (p *Plain) process() *vmm.Process {
	return &vmm.Process{
		Path:        p.path,
		Env:         append([]string{EnvSandbox + "=plain"}, baseEnv()...),
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL},
		Log:         p.Log,
	}
}
