package jail

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// Status describes how the running worker is confined.
type Status struct {
	// Mode is "jail", "plain", or empty when Confine has not run.
	Mode string `json:"mode"`
	// Namespaces is true when the worker runs in fresh namespaces.
	Namespaces bool `json:"namespaces"`
	// PrivateRoot is true when the worker's root is an empty read-only tmpfs.
	PrivateRoot bool `json:"private_root"`
	// ClosedFDs counts descriptors the worker inherited by accident (left open
	// without close-on-exec in the host) and closed.
	ClosedFDs int `json:"closed_fds"`
	// SwitchedUID is the uid the worker switched to itself (no user namespace),
	// or -1.
	SwitchedUID int `json:"switched_uid"`
	// Rlimits is true once the resource limits are set.
	Rlimits bool `json:"rlimits"`
	// LandlockABI is the Landlock ABI version enforced, 0 when none.
	LandlockABI int `json:"landlock_abi"`
	// CapsDropped is true once every thread has empty capability sets.
	CapsDropped bool `json:"capabilities_dropped"`
	// Seccomp is the filter's mode (SeccompKill or SeccompErrno), empty when
	// no filter is loaded.
	Seccomp string `json:"seccomp"`
	// Broker is the descriptor of the broker socket, the only one recvmsg
	// may read, or -1 when the worker has none.
	Broker int `json:"broker"`
	// Warnings name the layers this kernel does not offer.
	Warnings []string `json:"warnings,omitempty"`
}

var (
	confineOnce sync.Once
	status      = Status{SwitchedUID: -1}
	confineErr  error
)

// CurrentStatus returns the confinement of the running process.
func CurrentStatus() Status { return status }

// Confine confines the calling worker process as the host asked through the
// environment (EnvSandbox and the variables the jail backend sets). A worker
// must call it first, before it reads its request or any image byte, and must
// stop if it fails. It returns warnings naming layers this kernel lacks, which
// the worker should send to the host as proto.Message{Warning: ...} lines.
//
// With EnvSandbox=plain it does nothing. Errors are *errcode.Error with code
// SANDBOX_UNAVAILABLE. Confine leaves the calling goroutine locked to its OS
// thread for good. Calling it again returns the first call's outcome.
func Confine() ([]string, error) {
	confineOnce.Do(func() { confineErr = confine() })
	return status.Warnings, confineErr
}

// ConfineGuest confines the /init of a microvm guest (vmm/microvm): the same
// layers as the jail's worker except the namespaces, which a virtual machine
// of its own makes pointless. descriptors is the number of descriptors from
// proto.FirstImageFD on that the guest keeps; any later one is closed. seccomp
// is SeccompKill, or SeccompErrno for the probe run.
func ConfineGuest(descriptors int, seccomp string) ([]string, error) {
	os.Setenv(EnvSandbox, "guest")
	os.Setenv(envImages, strconv.Itoa(descriptors))
	os.Setenv(envSeccomp, seccomp)
	return Confine()
}

func confine() error {
	runtime.LockOSThread() // never unlocked: the thread carries the confinement
	switch mode := os.Getenv(EnvSandbox); mode {
	case "plain":
		status.Mode = "plain"
		return nil
	case "jail", "guest":
		status.Mode = mode
	default:
		return unavailable("%s is %q; the worker only runs under a sandbox backend", EnvSandbox, mode)
	}
	// Load the local time zone while the host's files are still visible, so
	// that no later time formatting tries to open one.
	_ = time.Local.String()

	images, err := strconv.Atoi(os.Getenv(envImages))
	if err != nil || images < 0 {
		return unavailable("%s=%q is not a number of images", envImages, os.Getenv(envImages))
	}
	if status.ClosedFDs, err = closeStrayFDs(proto.FirstImageFD + images); err != nil {
		return unavailable("%v", err)
	}

	broker := -1
	if v := os.Getenv(envBroker); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < proto.FirstImageFD || n >= proto.FirstImageFD+images {
			return unavailable("%s=%q is not a descriptor of the worker", envBroker, v)
		}
		broker = n
	}
	status.Broker = broker

	seccompMode := os.Getenv(envSeccomp)
	switch seccompMode {
	case "":
		seccompMode = SeccompKill
	case SeccompKill, SeccompErrno:
	default:
		return unavailable("%s=%q is not a seccomp mode", envSeccomp, seccompMode)
	}
	cpu := uint64(3600)
	if v := os.Getenv(envCPU); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return unavailable("%s=%q is not a number of seconds", envCPU, v)
		}
		cpu = n
	}

	if os.Getenv(envNamespaces) == "1" {
		if pid := os.Getpid(); pid != 1 {
			return unavailable("the worker expected fresh namespaces but is pid %d", pid)
		}
		status.Namespaces = true
		// A kernel policy may grant the namespaces but refuse mounts in them;
		// Landlock and seccomp still deny every path then.
		if err := pivotToEmptyRoot(); err != nil {
			status.Warnings = append(status.Warnings, fmt.Sprintf(
				"cannot build the empty root (%v): the worker keeps the host's file-system view", err))
		} else {
			status.PrivateRoot = true
		}
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			status.Warnings = append(status.Warnings, fmt.Sprintf("sethostname: %v", err))
		}
	} else if status.Mode != "guest" {
		status.Warnings = append(status.Warnings,
			"namespaces are unavailable: the worker shares the host's file-system view, pids and network")
	}

	if v := os.Getenv(envUID); v != "" {
		id, err := strconv.Atoi(v)
		if err != nil || id <= 0 {
			return unavailable("%s=%q is not a uid", envUID, v)
		}
		ppid := os.Getppid()
		// Go applies these to every thread.
		if err := syscall.Setgroups(nil); err != nil {
			return unavailable("setgroups: %v", err)
		}
		if err := syscall.Setresgid(id, id, id); err != nil {
			return unavailable("setresgid %d: %v", id, err)
		}
		if err := syscall.Setresuid(id, id, id); err != nil {
			return unavailable("setresuid %d: %v", id, err)
		}
		// A credential change clears the parent-death signal: arm it again,
		// and give up if the host died in between.
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			return unavailable("setting the parent-death signal: %v", err)
		}
		if os.Getppid() != ppid {
			os.Exit(1)
		}
		status.SwitchedUID = id
	}

	if err := setRlimits(cpu); err != nil {
		return unavailable("%v", err)
	}
	status.Rlimits = true

	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		status.Warnings = append(status.Warnings,
			"Landlock is unavailable in this kernel: file-system and network access are denied by seccomp and the empty root only")
	} else {
		// No rules: every handled file-system and network access is denied,
		// and (ABI 6+) abstract unix sockets and signals are scoped.
		if err := restrictLandlock(abi); err != nil {
			return unavailable("enforcing Landlock: %v", err)
		}
		status.LandlockABI = abi
	}

	// Every call on all threads signals each of them and waits: a few tens of
	// microseconds per thread. no_new_privs takes none of its own: the
	// seccomp filter sets it on the calling thread and, with TSYNC, on every
	// other (and restrictLandlock first, where Landlock needs it). A cgo
	// build, which cannot make such calls, fails here.
	if err := dropCapabilities(); err != nil {
		return unavailable("dropping capabilities: %v", err)
	}
	status.CapsDropped = true

	if err := loadSeccomp(seccompMode, broker); err != nil {
		return unavailable("loading the seccomp filter: %v", err)
	}
	status.Seccomp = seccompMode
	return nil
}

func unavailable(format string, args ...any) error {
	return errcode.New(errcode.SandboxUnavailable, "jail: "+format, args...)
}

// pivotToEmptyRoot replaces the worker's root with an empty, read-only tmpfs and
// detaches the host's tree. It runs in the worker's own mount namespace.
func pivotToEmptyRoot() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	// Any existing directory will do as the mount point: the mount is only
	// visible in this namespace.
	var dir string
	for _, d := range []string{"/tmp", "/mnt", "/dev", "/run"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			dir = d
			break
		}
	}
	if dir == "" {
		return errors.New("no directory to mount the new root on")
	}
	flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("instarfs-root", dir, "tmpfs", flags, "size=4k,mode=0555"); err != nil {
		return fmt.Errorf("mounting tmpfs on %s: %w", dir, err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching "."
	// then drops the whole host tree.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// closeStrayFDs closes every descriptor from first on that the Go runtime did
// not create: its netpoller's epoll and eventfd. Go's exec passes the worker
// only its stdio and images, but a descriptor the host inherited or opened
// without close-on-exec is passed too, and may itself be an epoll or eventfd.
// A descriptor that survived the exec lacks FD_CLOEXEC by definition, while
// the runtime creates its own with EPOLL_CLOEXEC and EFD_CLOEXEC: so only a
// close-on-exec epoll or eventfd is kept.
func closeStrayFDs(first int) (int, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("listing inherited descriptors: %w", err)
	}
	closed := 0
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < first {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the listing's own descriptor, closed by now
		}
		if runtimeFD(fd, target) {
			continue
		}
		if err := unix.Close(fd); err != nil {
			return closed, fmt.Errorf("closing inherited descriptor %d: %w", fd, err)
		}
		closed++
	}
	return closed, nil
}

// runtimeFD reports whether fd, whose /proc/self/fd link reads target, is one
// the Go runtime created in this process.
func runtimeFD(fd int, target string) bool {
	if target != "anon_inode:[eventpoll]" && target != "anon_inode:[eventfd]" {
		return false
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil && flags&unix.FD_CLOEXEC != 0
}

func setRlimits(cpu uint64) error {
	limits := []struct {
		name     string
		resource int
		value    uint64
	}{
		{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE, LimitNOFILE},
		{"RLIMIT_CORE", unix.RLIMIT_CORE, LimitCORE},
		{"RLIMIT_AS", unix.RLIMIT_AS, LimitAS},
		{"RLIMIT_FSIZE", unix.RLIMIT_FSIZE, LimitFSIZE},
		{"RLIMIT_MEMLOCK", unix.RLIMIT_MEMLOCK, LimitMEMLOCK},
		{"RLIMIT_MSGQUEUE", unix.RLIMIT_MSGQUEUE, LimitMSGQUEUE},
		{"RLIMIT_CPU", unix.RLIMIT_CPU, cpu},
	}
	for _, l := range limits {
		var cur unix.Rlimit
		if err := unix.Getrlimit(l.resource, &cur); err != nil {
			return fmt.Errorf("getrlimit %s: %w", l.name, err)
		}
		// Only ever lower a limit: raising one needs a capability and would
		// loosen what the host chose.
		v := min(l.value, cur.Max)
		if err := unix.Setrlimit(l.resource, &unix.Rlimit{Cur: v, Max: v}); err != nil {
			return fmt.Errorf("setrlimit %s %d: %w", l.name, v, err)
		}
	}
	return nil
}

// dropCapabilities empties the effective, permitted and inheritable sets of
// every thread. Capabilities are per thread in Linux, and a Go process already
// runs several threads.
func dropCapabilities() error {
	hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := &[2]unix.CapUserData{}
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET,
		uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	return threadsErr(errno)
}

// restrictLandlock denies every file-system and network access that
// Landlock handles at this kernel's ABI, and (ABI 6+) scopes abstract unix
// sockets and signals, on every thread. Landlock restricts a thread that has
// no_new_privs or CAP_SYS_ADMIN. A worker that still holds the capability (in
// its own user namespace, or as root) restricts every thread in one
// all-thread call, and gets no_new_privs from the seccomp filter's load
// afterwards; one without it lets go-landlock set no_new_privs on every
// thread first, a second all-thread call. From ABI 8 on the kernel
// synchronizes the threads itself, and go-landlock makes one call.
func restrictLandlock(abi int) error {
	cfg := landlock.V11.BestEffort()
	if abi >= 8 || !effectiveCap(unix.CAP_SYS_ADMIN) {
		return cfg.Restrict()
	}
	fd, flags, err := cfg.NewRulesetFD()
	if err != nil || fd < 0 {
		return err
	}
	defer unix.Close(fd)
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(fd), uintptr(flags), 0)
	return threadsErr(errno)
}

// effectiveCap reports whether the calling thread (like every other: Go
// changes credentials on all threads) has capability c in its effective set.
func effectiveCap(c int) bool {
	hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := &[2]unix.CapUserData{}
	if err := unix.Capget(hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

func threadsErr(errno syscall.Errno) error {
	if errno == syscall.ENOTSUP {
		return errors.New("per-thread system calls are unsupported in this binary (build it with CGO_ENABLED=0)")
	}
	if errno != 0 {
		return errno
	}
	return nil
}
