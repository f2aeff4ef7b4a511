package jail_test

import (
	"bytes"
	"context"
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
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/jail"
	"instarfs/vmm/sandboxtest"
	"instarfs/vmm/sandboxtest/testworker"
)

// sleepJob is a job whose worker reports progress once and then sleeps, on a
// read-only and a writable scratch file.
func sleepJob(t *testing.T) vmm.Job {
	refs := []proto.ImageRef{{Name: "ro.img"}, {Name: "rw.img", Writable: true}}
	return vmm.Job{
		Request: proto.Request{Op: testworker.OpSleep, Images: refs},
		Files:   sandboxtest.Scratch(t, refs),
		Timeout: 30 * time.Second,
	}
}

// TestInheritedDescriptorsClosed leaks an eventfd and an epoll descriptor
// without close-on-exec into every worker, as a host that inherited them
// would, and checks from the host (/proc/<pid>/fdinfo of a running worker)
// that the worker closed them although they look like the Go runtime's own.
// The conformance suite checks the same from the inside.
func TestInheritedDescriptorsClosed(t *testing.T) {
	sandboxtest.LeakDescriptors(t)
	pids := make(chan int, 1)
	sb := jail.NewAt(jail.LevelUnknown, func(pid int) { pids <- pid })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	job := sleepJob(t)
	job.Progress = func(float64) {
		defer cancel()
		pid := <-pids
		first := proto.FirstImageFD + len(job.Files)
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
	if _, err := sb.Run(ctx, job); errcode.Of(err) != errcode.Cancelled {
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

// TestWorkerInspection looks at a running jailed worker from the host:
// /proc/<pid>/status, its namespaces, descriptors, mounts, uid map and limits.
func TestWorkerInspection(t *testing.T) {
	pids := make(chan int, 1)
	sb := jail.NewAt(jail.LevelUnknown, func(pid int) { pids <- pid })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	job := sleepJob(t)
	job.Files = job.Files[:1]
	job.Request.Images = job.Request.Images[:1]
	job.Progress = func(float64) {
		defer cancel()
		inspect(t, <-pids, job.Files[0])
	}
	if _, err := sb.Run(ctx, job); errcode.Of(err) != errcode.Cancelled {
		t.Fatalf("error %v, want CANCELLED after the inspection", err)
	}
}

func inspect(t *testing.T, pid int, image *os.File) {
	proc := filepath.Join("/proc", itoa(pid))
	// Every thread: capabilities, no_new_privs and the filter are per thread.
	tasks, err := filepath.Glob(filepath.Join(proc, "task", "*", "status"))
	if err != nil || len(tasks) < 2 {
		t.Errorf("the worker's threads: %v %v", tasks, err)
	}
	for _, status := range tasks {
		for field, want := range map[string]string{
			"Seccomp":    "2",
			"NoNewPrivs": "1",
			"CapEff":     "0000000000000000",
			"CapPrm":     "0000000000000000",
			"CapInh":     "0000000000000000",
			"CapAmb":     "0000000000000000",
		} {
			if got := jail.StatusField(status, field); got != want {
				t.Errorf("%s: %s is %q, want %q", status, field, got, want)
			}
		}
	}
	// Every namespace but the network's, which the seccomp filter makes
	// redundant (no socket of any family; see namespaceFlags).
	for ns, fresh := range map[string]bool{"user": true, "mnt": true, "pid": true, "ipc": true, "uts": true, "cgroup": true, "net": false} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(filepath.Join(proc, "ns", ns))
		if err1 != nil || err2 != nil {
			t.Errorf("reading %s namespace: %v %v", ns, err1, err2)
		} else if fresh && mine == its {
			t.Errorf("the worker shares the host's %s namespace %s", ns, mine)
		} else if !fresh && mine != its {
			t.Errorf("the worker has a %s namespace of its own (%s, the host's %s): a cost for nothing", ns, its, mine)
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
	} else if host, _ := strconv.Atoi(f[1]); os.Getuid() == 0 && !jail.IsWorkerID(host) || os.Getuid() != 0 && host != os.Getuid() {
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

// TestWorkerUIDs runs two workers side by side at each level and looks at
// them from the host: as root, each runs as a uid and gid of its own from the
// worker range, not as nobody, and a process of nobody cannot signal it.
func TestWorkerUIDs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("an unprivileged host maps the worker to its own uid")
	}
	for _, level := range []jail.Level{jail.LevelUserNS, jail.LevelRootNS, jail.LevelNoNS} {
		t.Run(level.String(), func(t *testing.T) {
			pids := make(chan int, 2)
			sb := jail.NewAt(level, func(pid int) { pids <- pid })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ready := make(chan struct{}, 2)
			done := make(chan error, 2)
			for range 2 {
				go func() {
					_, err := sb.Run(ctx, vmm.Job{Request: proto.Request{Op: testworker.OpSleep}, Progress: func(float64) { ready <- struct{}{} }})
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
					ids := strings.Fields(jail.StatusField(status, field))
					if len(ids) != 4 || ids[0] != ids[1] || ids[0] != ids[2] || ids[0] != ids[3] {
						t.Fatalf("worker %d: %s %q, want one id four times", pid, field, ids)
					}
					id, _ := strconv.Atoi(ids[0])
					if !jail.IsWorkerID(id) {
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
				if err := <-done; errcode.Of(err) != errcode.Cancelled {
					t.Errorf("worker ended with %v, want CANCELLED", err)
				}
			}
		})
	}
}

// TestLevels runs sandbox-check at every isolation level and checks which
// layers the worker reports: namespaces and the empty root where the level
// has them, every other layer always.
func TestLevels(t *testing.T) {
	levels := []jail.Level{jail.LevelUserNS, jail.LevelNoNS}
	if os.Geteuid() == 0 {
		levels = append(levels, jail.LevelRootNS)
	}
	for _, level := range levels {
		t.Run(level.String(), func(t *testing.T) {
			sb := jail.NewAt(level, nil)
			r, err := jail.SandboxCheck(context.Background(), sb)
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK {
				t.Fatalf("sandbox-check failed:\n%s", r)
			}
			c := r.Worker.Confinement
			if c.Namespaces != (level != jail.LevelNoNS) || c.PrivateRoot != (level != jail.LevelNoNS) {
				t.Errorf("confinement %+v at level %v", c, level)
			}
			if c.Mode != "jail" || !c.Rlimits || !c.CapsDropped || c.Seccomp != jail.SeccompErrno {
				t.Errorf("confinement %+v: want rlimits, no capabilities and the errno filter", c)
			}
			if r.Host.LandlockABI > 0 && c.LandlockABI != r.Host.LandlockABI {
				t.Errorf("landlock ABI %d in the worker, the host offers %d", c.LandlockABI, r.Host.LandlockABI)
			}
			if switched := level != jail.LevelUserNS && os.Geteuid() == 0; switched && !jail.IsWorkerID(c.SwitchedUID) || !switched && c.SwitchedUID != -1 {
				t.Errorf("switched uid %d at level %v", c.SwitchedUID, level)
			}
			if level != jail.LevelUserNS && len(r.Warnings) == 0 {
				t.Errorf("no warning at level %v", level)
			}
		})
	}
}

// TestPlainIsNotConfined checks that the probes notice a missing sandbox.
func TestPlainIsNotConfined(t *testing.T) {
	r, err := jail.SandboxCheck(context.Background(), &jail.Plain{})
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
		if p.Name == jail.ProbeOpenHostFile && p.OK {
			t.Errorf("an unconfined worker could not open a host file? %+v", p)
		}
	}
}

func TestWorkerRefusesWithoutSandboxMode(t *testing.T) {
	p := &vmm.Process{Env: []string{}}
	_, err := p.Run(context.Background(), vmm.Job{Request: proto.Request{Op: proto.OpNoop}})
	if errcode.Of(err) != errcode.SandboxUnavailable || !strings.Contains(err.Error(), jail.EnvSandbox) {
		t.Fatalf("error %v, want SANDBOX_UNAVAILABLE naming %s", err, jail.EnvSandbox)
	}
}

func TestRegistry(t *testing.T) {
	for _, name := range []string{"", "auto", "jail"} {
		sb, err := vmm.New(name)
		if err != nil {
			t.Fatalf("vmm.New(%q): %v", name, err)
		}
		if _, ok := sb.(*jail.Sandbox); !ok || sb.Name() != "jail" {
			t.Errorf("vmm.New(%q) = %T %s, want the jail", name, sb, sb.Name())
		}
	}
	if _, err := vmm.New("plain"); errcode.Of(err) != errcode.BadArguments {
		t.Errorf("vmm.New(plain): %v, want BAD_ARGUMENTS", err)
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
	cmd := exec.Command(bin, "-test.run", "^(TestConformance|TestWorkerInspection|TestLevels)$", "-test.count=1")
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
func BenchmarkWorkerStart(b *testing.B) { benchmarkStart(b, jail.New()) }

// BenchmarkPlainStart is the same without any confinement, for comparison.
func BenchmarkPlainStart(b *testing.B) { benchmarkStart(b, &jail.Plain{}) }

func benchmarkStart(b *testing.B, sb vmm.Sandbox) {
	ctx := context.Background()
	job := vmm.Job{Request: proto.Request{Op: proto.OpNoop}}
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
	levels := []jail.Level{jail.LevelUserNS, jail.LevelNoNS}
	if os.Geteuid() == 0 {
		levels = append(levels, jail.LevelRootNS)
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
	pids := make(chan int, 1)
	sb := jail.NewAt(jail.Level(level), func(pid int) { pids <- pid })
	sb.Run(context.Background(), vmm.Job{
		Request: proto.Request{Op: testworker.OpSleep},
		Progress: func(float64) {
			fmt.Printf("worker %d\n", <-pids)
		},
	})
}

// landlockThreadsEnv makes the test binary run jail.LandlockThreads.
const landlockThreadsEnv = "INSTARFS_TEST_LANDLOCK_THREADS"

// TestLandlockEveryThread checks that Landlock restricts every thread of the
// worker, both when the worker holds CAP_SYS_ADMIN (one all-thread call) and
// when it does not (no_new_privs on every thread first).
func TestLandlockEveryThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the child holds CAP_SYS_ADMIN, then drops it")
	}
	for _, mode := range []string{"keep-admin", "drop-admin"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command("/proc/self/exe", "-test.run=^$")
			cmd.Env = append(os.Environ(), landlockThreadsEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			got := strings.TrimSpace(string(out))
			if got == "no landlock" {
				t.Skip("Landlock is unavailable in this kernel")
			}
			if err != nil || got != "8 of 8 threads denied" {
				t.Fatalf("child: %v, %q; want 8 of 8 threads denied", err, got)
			}
		})
	}
}
