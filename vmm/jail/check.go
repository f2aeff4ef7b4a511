package jail

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/jail/internal/seccomp"
)

// Host says which confinement layers this host offers, as seen from the host
// process.
type Host struct {
	Kernel string `json:"kernel"`
	UID    int    `json:"uid"`
	// UserNamespaces is false when a kernel setting is known to refuse them;
	// running a worker is the real test.
	UserNamespaces       bool   `json:"user_namespaces"`
	UserNamespacesDetail string `json:"user_namespaces_detail"`
	// LandlockABI is 0 when Landlock is unavailable.
	LandlockABI int `json:"landlock_abi"`
	// SeccompFilter is true when the kernel runs seccomp filters that can kill
	// the process (Linux 4.14+).
	SeccompFilter bool `json:"seccomp_filter"`
	// AllThreadsSyscall is false in a cgo build, where the jail cannot drop
	// capabilities on every thread.
	AllThreadsSyscall bool `json:"all_threads_syscall"`
	// CapEff is the host process's effective capability mask (hex).
	CapEff string `json:"cap_eff"`
	// ProtectedHardlinks is fs.protected_hardlinks, -1 when unknown. instarfs
	// follows hard links (see hardlinkWarning).
	ProtectedHardlinks int `json:"protected_hardlinks"`
}

// HostReport inspects the host.
func HostReport() Host {
	r := Host{UID: os.Getuid()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	r.UserNamespaces, r.UserNamespacesDetail = userNamespaces(r.UID)
	if abi, err := llsys.LandlockGetABIVersion(); err == nil {
		r.LandlockABI = abi
	}
	r.SeccompFilter = seccomp.Supported()
	_, _, errno := syscall.AllThreadsSyscall(syscall.SYS_GETPID, 0, 0, 0)
	r.AllThreadsSyscall = errno == 0
	r.CapEff = statusField("/proc/self/status", "CapEff")
	r.ProtectedHardlinks = -1
	if v, err := readInt("/proc/sys/fs/protected_hardlinks"); err == nil {
		r.ProtectedHardlinks = int(v)
	}
	return r
}

// hardlinkWarning says what fs.protected_hardlinks = v means for the path
// policy, or "" when nothing. A hard link has no path outside the roots to
// refuse: it is the file itself. instarfs follows hard links, as qemu does and
// as users who hard-link base images need, and relies on the kernel to stop a
// user from linking a file that user could not read and write anyway.
func hardlinkWarning(v int) string {
	if v != 0 {
		return ""
	}
	return "fs.protected_hardlinks is 0: a user who can create files under an image root can hard-link any file of the same file system into it, and instarfs follows hard links; set it to 1 or keep the roots on a file system of their own"
}

// userNamespaces reads the kernel settings that decide whether this user may
// create a user namespace.
func userNamespaces(uid int) (bool, string) {
	max, err := readInt("/proc/sys/user/max_user_namespaces")
	if err != nil {
		return false, "no /proc/sys/user/max_user_namespaces: the kernel lacks user namespaces"
	}
	if max == 0 {
		return false, "user.max_user_namespaces is 0"
	}
	detail := fmt.Sprintf("user.max_user_namespaces=%d", max)
	if uid != 0 {
		if v, err := readInt("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && v == 0 {
			return false, "kernel.unprivileged_userns_clone is 0"
		}
		if v, err := readInt("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"); err == nil && v != 0 {
			return false, "kernel.apparmor_restrict_unprivileged_userns is set"
		}
	}
	return true, detail
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// statusField returns one field of a /proc/<pid>/status file, or "".
func statusField(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Report is the outcome of SandboxCheck, for `instarfs sandbox-check`.
type Report struct {
	Backend string `json:"backend"`
	Level   string `json:"level,omitempty"`
	Host    Host   `json:"host"`
	// StartMedian is the median time from starting a worker to its result
	// (noop operation).
	StartMedian time.Duration `json:"start_median_ns"`
	// StartRuns is how many noop runs were timed.
	StartRuns int `json:"start_runs"`
	// Worker is the probe run's report; nil when the worker did not answer.
	Worker      *ProbeReport `json:"worker,omitempty"`
	WorkerError string       `json:"worker_error,omitempty"`
	// Violation is what a forbidden system call did; ViolationOK is true when
	// the sandbox killed the worker for it (SANDBOX_VIOLATION).
	Violation   string   `json:"violation"`
	ViolationOK bool     `json:"violation_ok"`
	Warnings    []string `json:"warnings,omitempty"`
	OK          bool     `json:"ok"`
}

// Noop runs timed by SandboxCheck: checkRuns, or as many as fit in
// checkTime after the first (a virtual machine's boot takes seconds).
const (
	checkRuns = 5
	checkTime = time.Second
)

// SandboxCheck reports on the host and runs probe workers through sb: noop runs
// (timed), one proto.OpSandboxProbe run on two scratch images (one read-only, one
// writable), and one proto.OpSandboxViolate run that must be killed. The error
// is non-nil only when the check itself could not run (scratch files);
// sandbox failures are in the report, with OK false.
func SandboxCheck(ctx context.Context, sb vmm.Sandbox) (*Report, error) {
	r := &Report{Backend: sb.Name(), Host: HostReport()}

	dir, err := os.MkdirTemp("", "instarfs-sandbox-check-")
	if err != nil {
		return nil, fmt.Errorf("sandbox-check: creating scratch directory: %w", err)
	}
	defer os.RemoveAll(dir)
	files, err := scratchImages(dir)
	if err != nil {
		return nil, fmt.Errorf("sandbox-check: %w", err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	// Generous: a virtual machine emulated on a loaded host boots slowly.
	const timeout = 2 * time.Minute

	var times []time.Duration
	for begin := time.Now(); len(times) < checkRuns && (len(times) == 0 || time.Since(begin) < checkTime); {
		start := time.Now()
		_, err := sb.Run(ctx, vmm.Job{Request: proto.Request{Op: proto.OpNoop}, Timeout: timeout})
		if err != nil {
			r.WorkerError = fmt.Sprintf("%s: %v", errcode.Of(err), err)
			r.finish(sb)
			return r, nil
		}
		times = append(times, time.Since(start))
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	r.StartMedian, r.StartRuns = times[len(times)/2], len(times)

	probe := vmm.Job{
		Request: proto.Request{Op: proto.OpSandboxProbe, Images: []proto.ImageRef{
			{Name: "probe-ro.img", Format: "raw"},
			{Name: "probe-rw.img", Format: "raw", Writable: true},
		}},
		Files:   files,
		Timeout: timeout,
		// The probes run with a broker, so that its seccomp rule is in the
		// filter they test.
		Broker: refuseAll{},
	}
	res, err := sb.Run(ctx, probe)
	if err != nil {
		r.WorkerError = fmt.Sprintf("%s: %v", errcode.Of(err), err)
	} else {
		var pr ProbeReport
		dec := json.NewDecoder(bytes.NewReader(res))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&pr); err != nil {
			r.WorkerError = fmt.Sprintf("%s: decoding the probe report: %v", errcode.WorkerProtocol, err)
		} else {
			r.Worker = &pr
		}
	}

	_, err = sb.Run(ctx, vmm.Job{Request: proto.Request{Op: proto.OpSandboxViolate}, Timeout: timeout})
	switch code := errcode.Of(err); {
	case err == nil:
		r.Violation = "the forbidden call was not refused"
	case code == errcode.SandboxViolation:
		r.Violation, r.ViolationOK = "worker killed (SANDBOX_VIOLATION)", true
	default:
		r.Violation = fmt.Sprintf("%s: %v", code, err)
	}
	r.finish(sb)
	return r, nil
}

func (r *Report) finish(sb vmm.Sandbox) {
	if j, ok := sb.(*Sandbox); ok {
		l := j.Level()
		r.Level = l.String()
		if l != LevelUserNS && l != LevelUnknown {
			r.Warnings = append(r.Warnings, "the worker runs with "+l.String())
		}
	}
	if r.Worker != nil {
		r.Warnings = append(r.Warnings, r.Worker.Confinement.Warnings...)
	}
	if w := hardlinkWarning(r.Host.ProtectedHardlinks); w != "" {
		r.Warnings = append(r.Warnings, w)
	}
	r.OK = r.WorkerError == "" && r.Worker != nil && r.Worker.OK() && r.ViolationOK
}

// scratchImages creates a read-only and a writable 64 KiB scratch file.
func scratchImages(dir string) ([]*os.File, error) {
	data := bytes.Repeat([]byte("instarfs"), 8192)
	var files []*os.File
	for _, name := range []string{"probe-ro.img", "probe-rw.img"} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("writing scratch image: %w", err)
		}
		flag := os.O_RDONLY
		if name == "probe-rw.img" {
			flag = os.O_RDWR
		}
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			return nil, fmt.Errorf("opening scratch image: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

// String renders the report for a terminal.
func (r *Report) String() string {
	var b strings.Builder
	yes := func(ok bool, y, n string) string {
		if ok {
			return y
		}
		return n
	}
	fmt.Fprintf(&b, "sandbox: %s\n", r.Backend)
	fmt.Fprintf(&b, "host:\n")
	fmt.Fprintf(&b, "  kernel               %s\n", r.Host.Kernel)
	fmt.Fprintf(&b, "  uid                  %d\n", r.Host.UID)
	fmt.Fprintf(&b, "  user namespaces      %s (%s)\n", yes(r.Host.UserNamespaces, "available", "unavailable"), r.Host.UserNamespacesDetail)
	fmt.Fprintf(&b, "  landlock             %s\n", yes(r.Host.LandlockABI > 0, fmt.Sprintf("ABI %d", r.Host.LandlockABI), "unavailable"))
	fmt.Fprintf(&b, "  seccomp filters      %s\n", yes(r.Host.SeccompFilter, "available", "unavailable"))
	fmt.Fprintf(&b, "  per-thread syscalls  %s\n", yes(r.Host.AllThreadsSyscall, "available", "unsupported (cgo build)"))
	fmt.Fprintf(&b, "  capabilities         CapEff=%s\n", r.Host.CapEff)
	hardlinks := "on"
	switch r.Host.ProtectedHardlinks {
	case -1:
		hardlinks = "unknown"
	case 0:
		hardlinks = "off (fs.protected_hardlinks=0)"
	}
	fmt.Fprintf(&b, "  protected hardlinks  %s\n", hardlinks)
	fmt.Fprintf(&b, "worker:\n")
	if r.Level != "" {
		fmt.Fprintf(&b, "  isolation            %s\n", r.Level)
	}
	if r.StartMedian > 0 {
		fmt.Fprintf(&b, "  start to result      %.1f ms (median of %d noop runs)\n",
			float64(r.StartMedian)/float64(time.Millisecond), r.StartRuns)
	}
	if r.Worker != nil {
		c := r.Worker.Confinement
		var layers []string
		if c.Namespaces {
			layers = append(layers, "namespaces")
		}
		if c.PrivateRoot {
			layers = append(layers, "empty read-only root")
		}
		if c.SwitchedUID >= 0 {
			layers = append(layers, fmt.Sprintf("uid %d", c.SwitchedUID))
		}
		if c.Rlimits {
			layers = append(layers, "rlimits")
		}
		if c.LandlockABI > 0 {
			layers = append(layers, fmt.Sprintf("landlock ABI %d", c.LandlockABI))
		}
		if c.CapsDropped {
			layers = append(layers, "no capabilities")
		}
		if c.Seccomp != "" {
			layers = append(layers, "seccomp allow-list")
		}
		fmt.Fprintf(&b, "  layers               %s\n", strings.Join(layers, ", "))
		fmt.Fprintf(&b, "probes (inside the worker; seccomp in EPERM mode for this run):\n")
		for _, p := range r.Worker.Probes {
			got := "succeeded"
			if p.Errno != "" {
				got = "failed: " + p.Errno
			}
			fmt.Fprintf(&b, "  %-4s %-20s %-8s %-14s %s\n", yes(p.OK, "ok", "FAIL"), p.Name, p.Expect, got, p.Detail)
		}
	}
	if r.WorkerError != "" {
		fmt.Fprintf(&b, "  worker error         %s\n", r.WorkerError)
	}
	if r.Violation != "" {
		fmt.Fprintf(&b, "violation check:       %s %s\n", yes(r.ViolationOK, "ok", "FAIL"), r.Violation)
	}
	for _, w := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	fmt.Fprintf(&b, "result: %s\n", yes(r.OK, "OK", "FAILED"))
	return b.String()
}

// refuseAll is the broker of the probe run: it opens nothing.
type refuseAll struct{}

func (refuseAll) Answer(proto.BrokerRequest) (proto.BrokerReply, []*os.File) {
	return proto.BrokerReply{Error: errcode.New(errcode.WorkerProtocol, "the probe run opens no file")}, nil
}
