package jail

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/vmm"
)

// scratch returns a read-only and a writable 64 KiB file, closed at the end of
// the test.
func scratch(t *testing.T) []*os.File {
	t.Helper()
	files, err := scratchImages(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
	})
	return files
}

func scratchJob(t *testing.T, op string) vmm.Job {
	return vmm.Job{
		Request: vmm.Request{Op: op, Images: []vmm.ImageRef{
			{Name: "ro.img"}, {Name: "rw.img", Writable: true},
		}},
		Files:   scratch(t),
		Timeout: 30 * time.Second,
	}
}

// seccompProbes are the probes whose refusal must come from the seccomp filter.
var seccompProbes = []string{
	ProbeOpenHostFile, ProbeOpenRoot, ProbeOpenatDotDot, ProbeSocketInet, ProbeSocketUnix,
	ProbeSocketNetlink, ProbeFork, ProbeClone3, ProbeExecve, ProbePtrace, ProbeMount,
	ProbeUnshare, ProbeMemfd, ProbeIoctlImage, ProbeLockImage, ProbeKill, ProbeMmapExec, ProbeIoUring,
}

func TestSandboxCheck(t *testing.T) {
	sb := New()
	r, err := SandboxCheck(context.Background(), sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", r)
	if !r.OK {
		t.Fatalf("sandbox-check failed")
	}
	byName := map[string]ProbeResult{}
	for _, p := range r.Worker.Probes {
		byName[p.Name] = p
	}
	for _, name := range seccompProbes {
		p, ok := byName[name]
		if !ok {
			t.Errorf("probe %s missing", name)
			continue
		}
		if p.Expect != ExpectRefused || p.Errno != "EPERM" {
			t.Errorf("probe %s: expect %s, errno %q; want refused with EPERM", name, p.Expect, p.Errno)
		}
	}
	if p := byName[ProbeWriteReadOnly]; p.Errno != "EBADF" {
		t.Errorf("write to a read-only fd: errno %q, want EBADF", p.Errno)
	}
	c := r.Worker.Confinement
	if c.Mode != "jail" || !c.Namespaces || !c.PrivateRoot || !c.Rlimits || !c.CapsDropped || c.Seccomp != SeccompErrno {
		t.Errorf("confinement %+v: want every layer", c)
	}
	if r.Host.LandlockABI > 0 && c.LandlockABI != r.Host.LandlockABI {
		t.Errorf("landlock ABI %d in the worker, host offers %d", c.LandlockABI, r.Host.LandlockABI)
	}
	if sb.Level() != LevelUserNS {
		t.Errorf("level %v, want %v", sb.Level(), LevelUserNS)
	}
}

// TestInheritedDescriptorsClosed leaks an eventfd and an epoll descriptor
// without close-on-exec into every worker, as a host that inherited them
// would, and checks that the worker closed them although they look like the
// Go runtime's own: from the inside (the probe report) and from the host
// (/proc/<pid>/fdinfo of a running worker).
func TestInheritedDescriptorsClosed(t *testing.T) {
	efd, err := unix.Eventfd(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	epfd, err := unix.EpollCreate(1)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	// The inherited epoll watches the inherited eventfd, as the runtime's does.
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}); err != nil {
		t.Fatal(err)
	}

	r, err := SandboxCheck(context.Background(), New())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range r.Worker.Probes {
		if p.Name == ProbeNoInheritedFD && !p.OK {
			t.Errorf("probe %s: %s (%s)", p.Name, p.Detail, p.Errno)
		}
	}

	sb := New()
	pids := make(chan int, 1)
	sb.started = func(pid int) { pids <- pid }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	job := scratchJob(t, opSleep)
	job.Progress = func(float64) {
		defer cancel()
		pid := <-pids
		first := vmm.FirstImageFD + len(job.Files)
		entries, err := os.ReadDir(filepath.Join("/proc", itoa(pid), "fd"))
		if err != nil {
			t.Error(err)
			return
		}
		for _, e := range entries {
			fd, _ := strconv.Atoi(e.Name())
			if fd < first {
				continue
			}
			info, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "fdinfo", e.Name()))
			if err != nil {
				t.Error(err)
				continue
			}
			flags, err := strconv.ParseUint(statusLine(string(info), "flags"), 8, 64)
			if err != nil || flags&unix.O_CLOEXEC == 0 {
				target, _ := os.Readlink(filepath.Join("/proc", itoa(pid), "fd", e.Name()))
				t.Errorf("worker descriptor %d -> %s has flags %o: inherited, not closed", fd, target, flags)
			}
		}
	}
	if _, err := sb.Run(ctx, job); errcode.Code(err) != errcode.Cancelled {
		t.Fatalf("error %v, want CANCELLED after the inspection", err)
	}
}

// statusLine returns the value of "name:" in a /proc key-value text.
func statusLine(text, name string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func TestFailureModes(t *testing.T) {
	sb := New()
	tests := []struct {
		op      string
		timeout time.Duration
		code    string // "" for success
		message string // substring of the error message
	}{
		{op: vmm.OpNoop},
		{op: opProgress},
		{op: opCrash, code: errcode.WorkerCrashed, message: "panic: test worker crash"},
		{op: opExit, code: errcode.WorkerCrashed, message: "exited with status 3 without a result"},
		{op: opResultThenCrash, code: errcode.WorkerCrashed, message: "after writing its result"},
		{op: opSleep, timeout: 300 * time.Millisecond, code: errcode.WorkerTimeout, message: "300ms"},
		{op: opGarbage, code: errcode.WorkerProtocol, message: "not a protocol message"},
		{op: opHuge, code: errcode.WorkerProtocol, message: "more than 67108864 bytes"},
		{op: opTwoResults, code: errcode.WorkerProtocol, message: "follows the final line"},
		{op: opUnknownField, code: errcode.WorkerProtocol, message: "unknown field"},
		{op: opForbidden, code: errcode.SandboxViolation, message: "SIGSYS"},
		{op: vmm.OpSandboxViolate, code: errcode.SandboxViolation},
		{op: opError, code: errcode.Qcow2Corrupt, message: "test image is corrupt"},
		{op: "no-such-op", code: errcode.BadArguments},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 30 * time.Second
			}
			start := time.Now()
			res, err := sb.Run(context.Background(), vmm.Job{Request: vmm.Request{Op: tt.op}, Timeout: timeout})
			if tt.code == "" {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if len(res) == 0 {
					t.Fatalf("empty result")
				}
				return
			}
			if err == nil {
				t.Fatalf("Run succeeded with %s, want %s", res, tt.code)
			}
			if got := errcode.Code(err); got != tt.code {
				t.Fatalf("error %s: %v; want %s", got, err, tt.code)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not mention %q", err, tt.message)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestProgress(t *testing.T) {
	var got []float64
	_, err := New().Run(context.Background(), vmm.Job{
		Request:  vmm.Request{Op: opProgress},
		Progress: func(p float64) { got = append(got, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{0.25, 0.5, 1}; !equalFloats(got, want) {
		t.Errorf("progress %v, want %v", got, want)
	}
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	_, err := New().Run(ctx, vmm.Job{
		Request:  vmm.Request{Op: opSleep},
		Progress: func(float64) { cancel() },
	})
	if errcode.Code(err) != errcode.Cancelled {
		t.Fatalf("error %v, want CANCELLED", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
	if _, err := New().Run(ctx, vmm.Job{Request: vmm.Request{Op: vmm.OpNoop}}); errcode.Code(err) != errcode.Cancelled {
		t.Errorf("run with a cancelled context: %v, want CANCELLED", err)
	}
}

func TestStressUnderKillFilter(t *testing.T) {
	sb := New()
	for i := 0; i < 3; i++ {
		if _, err := sb.Run(context.Background(), scratchJob(t, opStress)); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
}

// TestWorkerInspection looks at a running jailed worker from the host:
// /proc/<pid>/status, its namespaces, descriptors, mounts, uid map and limits.
func TestWorkerInspection(t *testing.T) {
	sb := New()
	pids := make(chan int, 1)
	sb.started = func(pid int) { pids <- pid }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	job := scratchJob(t, opSleep)
	job.Files = job.Files[:1]
	job.Request.Images = job.Request.Images[:1]
	job.Progress = func(float64) {
		defer cancel()
		inspect(t, <-pids, job.Files[0])
	}
	if _, err := sb.Run(ctx, job); errcode.Code(err) != errcode.Cancelled {
		t.Fatalf("error %v, want CANCELLED after the inspection", err)
	}
}

func inspect(t *testing.T, pid int, image *os.File) {
	proc := filepath.Join("/proc", itoa(pid))
	status := filepath.Join(proc, "status")
	for field, want := range map[string]string{
		"Seccomp":    "2",
		"NoNewPrivs": "1",
		"CapEff":     "0000000000000000",
		"CapPrm":     "0000000000000000",
		"CapInh":     "0000000000000000",
		"CapAmb":     "0000000000000000",
	} {
		if got := statusField(status, field); got != want {
			t.Errorf("%s: %s is %q, want %q", status, field, got, want)
		}
	}
	for _, ns := range []string{"user", "mnt", "pid", "net", "ipc", "uts", "cgroup"} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(filepath.Join(proc, "ns", ns))
		if err1 != nil || err2 != nil {
			t.Errorf("reading %s namespace: %v %v", ns, err1, err2)
		} else if mine == its {
			t.Errorf("the worker shares the host's %s namespace %s", ns, mine)
		}
	}

	entries, err := os.ReadDir(filepath.Join(proc, "fd"))
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(proc, "fd", e.Name()))
		if err != nil {
			t.Errorf("fd %s: %v", e.Name(), err)
			continue
		}
		fds = append(fds, e.Name()+" -> "+target)
		switch e.Name() {
		case "0", "1", "2":
			if !strings.HasPrefix(target, "pipe:") {
				t.Errorf("fd %s is %s, want a pipe", e.Name(), target)
			}
		case "3":
			if target != image.Name() {
				t.Errorf("fd 3 is %s, want the image %s", target, image.Name())
			}
		default:
			if target != "anon_inode:[eventpoll]" && target != "anon_inode:[eventfd]" {
				t.Errorf("unexpected descriptor %s -> %s in the worker", e.Name(), target)
			}
		}
	}
	sort.Strings(fds)
	t.Logf("worker descriptors: %s", strings.Join(fds, ", "))

	mounts, err := os.ReadFile(filepath.Join(proc, "mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(mounts)), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], " / / ro,") || !strings.Contains(lines[0], " - tmpfs ") {
		t.Errorf("worker mounts:\n%s\nwant one read-only tmpfs root", mounts)
	}
	uidMap, err := os.ReadFile(filepath.Join(proc, "uid_map"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(uidMap))
	if len(f) != 3 || f[0] != "0" || f[2] != "1" {
		t.Errorf("uid_map %q, want one id mapped to 0", uidMap)
	} else if host, _ := strconv.Atoi(f[1]); os.Getuid() == 0 && !isWorkerID(host) || os.Getuid() != 0 && host != os.Getuid() {
		t.Errorf("uid_map %q maps host uid %d", uidMap, host)
	}
	limits, err := os.ReadFile(filepath.Join(proc, "limits"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Max open files            64", "Max core file size        0", "Max locked memory         0"} {
		if !bytes.Contains(limits, []byte(want)) {
			t.Errorf("worker limits lack %q:\n%s", want, limits)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// nobody is the unprivileged user the tests switch to.
const nobody = 65534

func isWorkerID(id int) bool { return id >= workerIDFirst && id < workerIDFirst+workerIDCount }

// TestWorkerUIDs runs two workers side by side at each level and looks at
// them from the host: as root, each runs as a uid and gid of its own from the
// worker range, not as nobody, and a process of nobody cannot signal it.
func TestWorkerUIDs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("an unprivileged host maps the worker to its own uid")
	}
	for _, level := range []Level{LevelUserNS, LevelRootNS, LevelNoNS} {
		t.Run(level.String(), func(t *testing.T) {
			sb := &Sandbox{forceLevel: level}
			pids := make(chan int, 2)
			sb.started = func(pid int) { pids <- pid }
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ready := make(chan struct{}, 2)
			done := make(chan error, 2)
			for range 2 {
				go func() {
					_, err := sb.Run(ctx, vmm.Job{Request: vmm.Request{Op: opSleep}, Progress: func(float64) { ready <- struct{}{} }})
					done <- err
				}()
			}
			<-ready
			<-ready
			var uids []int
			for range 2 {
				pid := <-pids
				status := filepath.Join("/proc", itoa(pid), "status")
				for _, field := range []string{"Uid", "Gid"} {
					ids := strings.Fields(statusField(status, field))
					if len(ids) != 4 || ids[0] != ids[1] || ids[0] != ids[2] || ids[0] != ids[3] {
						t.Fatalf("worker %d: %s %q, want one id four times", pid, field, ids)
					}
					id, _ := strconv.Atoi(ids[0])
					if !isWorkerID(id) {
						t.Errorf("worker %d: %s %d, want one of the worker range", pid, field, id)
					}
					if field == "Uid" {
						uids = append(uids, id)
					}
				}
				// The attack: any process of nobody could stop or kill a
				// worker that ran as nobody.
				kill := exec.Command("/bin/sh", "-c", "kill -0 "+itoa(pid))
				kill.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
				if out, err := kill.CombinedOutput(); err == nil {
					t.Errorf("a process of uid %d may signal worker %d (%s)", nobody, pid, out)
				}
			}
			if len(uids) == 2 && uids[0] == uids[1] {
				t.Errorf("two workers run as the same uid %d", uids[0])
			}
			cancel()
			for range 2 {
				if err := <-done; errcode.Code(err) != errcode.Cancelled {
					t.Errorf("worker ended with %v, want CANCELLED", err)
				}
			}
		})
	}
}

func TestSubordinateRanges(t *testing.T) {
	p := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(p, []byte("alice:100000:65536\nbad line\nbob:1879048192:10\n#x:1:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := subordinateRanges(p)
	want := [][2]int{{100000, 65536}, {1879048192, 10}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ranges %v, want %v", got, want)
	}
	for _, tt := range []struct {
		id int
		in bool
	}{{99999, false}, {100000, true}, {165535, true}, {165536, false}, {1879048201, true}, {1879048202, false}} {
		if inRanges(tt.id, got) != tt.in {
			t.Errorf("inRanges(%d) = %t, want %t", tt.id, !tt.in, tt.in)
		}
	}
}

func TestLevels(t *testing.T) {
	levels := []Level{LevelUserNS, LevelNoNS}
	if os.Geteuid() == 0 {
		levels = append(levels, LevelRootNS)
	}
	for _, level := range levels {
		t.Run(level.String(), func(t *testing.T) {
			sb := &Sandbox{forceLevel: level}
			r, err := SandboxCheck(context.Background(), sb)
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK {
				t.Fatalf("sandbox-check failed:\n%s", r)
			}
			c := r.Worker.Confinement
			if c.Namespaces != (level != LevelNoNS) || c.PrivateRoot != (level != LevelNoNS) {
				t.Errorf("confinement %+v at level %v", c, level)
			}
			if switched := level != LevelUserNS && os.Geteuid() == 0; switched && !isWorkerID(c.SwitchedUID) || !switched && c.SwitchedUID != -1 {
				t.Errorf("switched uid %d at level %v", c.SwitchedUID, level)
			}
			if level != LevelUserNS && len(r.Warnings) == 0 {
				t.Errorf("no warning at level %v", level)
			}
		})
	}
}

// TestPlainIsNotConfined checks that the probes notice a missing sandbox.
func TestPlainIsNotConfined(t *testing.T) {
	r, err := SandboxCheck(context.Background(), &Plain{})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK {
		t.Fatalf("sandbox-check passed an unconfined worker:\n%s", r)
	}
	if r.Worker == nil || r.Worker.Confinement.Mode != "plain" {
		t.Fatalf("worker report %+v", r.Worker)
	}
	for _, p := range r.Worker.Probes {
		if p.Name == ProbeOpenHostFile && p.OK {
			t.Errorf("an unconfined worker could not open a host file? %+v", p)
		}
	}
}

func TestWorkerRefusesWithoutSandboxMode(t *testing.T) {
	p := &vmm.Process{Env: []string{}}
	_, err := p.Run(context.Background(), vmm.Job{Request: vmm.Request{Op: vmm.OpNoop}})
	if errcode.Code(err) != errcode.SandboxUnavailable || !strings.Contains(err.Error(), EnvSandbox) {
		t.Fatalf("error %v, want SANDBOX_UNAVAILABLE naming %s", err, EnvSandbox)
	}
}

func TestRegistry(t *testing.T) {
	for _, name := range []string{"", "auto", "jail"} {
		sb, err := vmm.New(name)
		if err != nil {
			t.Fatalf("vmm.New(%q): %v", name, err)
		}
		if _, ok := sb.(*Sandbox); !ok || sb.Name() != "jail" {
			t.Errorf("vmm.New(%q) = %T %s, want the jail", name, sb, sb.Name())
		}
	}
	if _, err := vmm.New("plain"); errcode.Code(err) != errcode.BadArguments {
		t.Errorf("vmm.New(plain): %v, want BAD_ARGUMENTS", err)
	}
}

// TestProtectedHardlinks: sandbox-check reports fs.protected_hardlinks and
// warns exactly when it is off, since instarfs follows hard links.
func TestProtectedHardlinks(t *testing.T) {
	h := HostReport()
	if v, err := readInt("/proc/sys/fs/protected_hardlinks"); err == nil && int(v) != h.ProtectedHardlinks {
		t.Errorf("report says %d, the kernel %d", h.ProtectedHardlinks, v)
	}
	for _, tt := range []struct {
		v    int
		warn bool
	}{{-1, false}, {0, true}, {1, false}} {
		r := &Report{Host: Host{ProtectedHardlinks: tt.v}}
		r.finish(&Plain{})
		warned := strings.Contains(strings.Join(r.Warnings, "\n"), "fs.protected_hardlinks is 0")
		if warned != tt.warn {
			t.Errorf("protected_hardlinks=%d: warnings %q", tt.v, r.Warnings)
		}
		if !strings.Contains(r.String(), "protected hardlinks") {
			t.Errorf("the report does not show protected hardlinks:\n%s", r)
		}
	}
}

func TestReportJSON(t *testing.T) {
	r := &Report{Backend: "jail", Worker: &ProbeReport{Probes: []ProbeResult{{Name: "x", Expect: ExpectRefused}}}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}

// TestUnprivileged runs the jail tests again as an unprivileged user (uid
// 65534), from a copy of the test binary that user may execute.
func TestUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user; this run is unprivileged already")
	}
	if testing.Short() {
		t.Skip("short mode")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "instarfs-jail-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "jail.test")
	if err := copyFile(self, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run", "^(TestSandboxCheck|TestFailureModes|TestCancel|TestStressUnderKillFilter|TestWorkerInspection|TestLevels)$", "-test.count=1")
	cmd.Env = []string{"TMPDIR=" + os.TempDir()}
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	t.Logf("as uid %d:\n%s", nobody, out)
	if err != nil {
		t.Fatalf("jail tests as an unprivileged user: %v", err)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BenchmarkWorkerStart measures a jailed worker from start to result (noop) and
// reports the median.
func BenchmarkWorkerStart(b *testing.B) { benchmarkStart(b, New()) }

// BenchmarkPlainStart is the same without any confinement, for comparison.
func BenchmarkPlainStart(b *testing.B) { benchmarkStart(b, &Plain{}) }

func benchmarkStart(b *testing.B, sb vmm.Sandbox) {
	ctx := context.Background()
	job := vmm.Job{Request: vmm.Request{Op: vmm.OpNoop}}
	if _, err := sb.Run(ctx, job); err != nil { // settle the level
		b.Fatal(err)
	}
	times := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := sb.Run(ctx, job); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2])/float64(time.Millisecond), "ms-median")
}

// TestWorkerDiesWithHost kills a host process (this test binary, re-executed)
// while its jailed worker runs, and checks that the worker dies too.
func TestWorkerDiesWithHost(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	levels := []Level{LevelUserNS, LevelNoNS}
	if os.Geteuid() == 0 {
		levels = append(levels, LevelRootNS)
	}
	for _, level := range levels {
		t.Run(level.String(), func(t *testing.T) {
			cmd := exec.Command("/proc/self/exe", "-test.run", "^TestHelperHost$", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+strconv.Itoa(int(level)))
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			var pid int
			if _, err := fmt.Fscanf(stdout, "worker %d\n", &pid); err != nil {
				t.Fatalf("reading the worker's pid from the helper host: %v", err)
			}
			if err := syscall.Kill(pid, 0); err != nil {
				t.Fatalf("worker %d is not running: %v", pid, err)
			}
			cmd.Process.Kill()
			cmd.Wait()
			deadline := time.Now().Add(5 * time.Second)
			for syscall.Kill(pid, 0) == nil {
				if stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); bytes.Contains(stat, []byte(") Z ")) {
					break // a zombie waiting for its new parent to reap it
				}
				if time.Now().After(deadline) {
					t.Fatalf("worker %d still runs 5 s after its host died", pid)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

const helperEnv = "INSTARFS_JAIL_TEST_HELPER_HOST"

// TestHelperHost is the host process of TestWorkerDiesWithHost: it starts a
// sleeping worker, prints its pid and waits to be killed.
func TestHelperHost(t *testing.T) {
	v := os.Getenv(helperEnv)
	if v == "" {
		t.Skip("helper for TestWorkerDiesWithHost")
	}
	level, _ := strconv.Atoi(v)
	sb := &Sandbox{forceLevel: Level(level)}
	pids := make(chan int, 1)
	sb.started = func(pid int) { pids <- pid }
	sb.Run(context.Background(), vmm.Job{
		Request: vmm.Request{Op: opSleep},
		Progress: func(float64) {
			fmt.Printf("worker %d\n", <-pids)
		},
	})
}
