package jail

import (
	"os"

	"golang.org/x/sys/unix"

	"instarfs/vmm/jail/internal/seccomp"
)

// allowed is a system call the worker may make with any arguments.
type allowed struct {
	name string
	nr   uintptr
}

// runtimeSyscalls are the system calls the Go runtime (CGO_ENABLED=0) makes
// once it is running: memory, scheduling, signals, timers and the netpoller.
// The list was established with strace on a stress workload (concurrent blocking
// preads that spawn threads, large allocations with forced GC and
// FreeOSMemory, timers, tight loops that trigger asynchronous preemption) and
// is checked by the Stress test of the conformance suite (vmm/sandboxtest).
var runtimeSyscalls = []allowed{
	{"munmap", unix.SYS_MUNMAP}, {"madvise", unix.SYS_MADVISE}, {"brk", unix.SYS_BRK},
	{"futex", unix.SYS_FUTEX}, {"sched_yield", unix.SYS_SCHED_YIELD},
	{"nanosleep", unix.SYS_NANOSLEEP}, {"clock_nanosleep", unix.SYS_CLOCK_NANOSLEEP},
	{"clock_gettime", unix.SYS_CLOCK_GETTIME},
	{"rt_sigaction", unix.SYS_RT_SIGACTION}, {"rt_sigprocmask", unix.SYS_RT_SIGPROCMASK},
	{"rt_sigreturn", unix.SYS_RT_SIGRETURN}, {"sigaltstack", unix.SYS_SIGALTSTACK},
	{"gettid", unix.SYS_GETTID}, {"getpid", unix.SYS_GETPID}, {"exit", unix.SYS_EXIT},
	{"exit_group", unix.SYS_EXIT_GROUP}, {"sched_getaffinity", unix.SYS_SCHED_GETAFFINITY},
	{"getrandom", unix.SYS_GETRANDOM}, {"restart_syscall", unix.SYS_RESTART_SYSCALL},
	{"epoll_create1", unix.SYS_EPOLL_CREATE1}, {"epoll_ctl", unix.SYS_EPOLL_CTL},
	{"epoll_pwait", unix.SYS_EPOLL_PWAIT}, {"epoll_pwait2", unix.SYS_EPOLL_PWAIT2},
	{"eventfd2", unix.SYS_EVENTFD2},
}

// ioSyscalls are the descriptor operations the worker's work needs: reading and
// writing images and stdio, block status (lseek SEEK_DATA/SEEK_HOLE), size,
// durability (and starting writeback early), hole punching and truncation, and
// copying a range from one image to another in the kernel (copy_file_range:
// like a pread and a pwrite, it works only between descriptors the worker
// already holds, and only into one opened for writing).
var ioSyscalls = []allowed{
	{"read", unix.SYS_READ}, {"write", unix.SYS_WRITE},
	{"pread64", unix.SYS_PREAD64}, {"pwrite64", unix.SYS_PWRITE64},
	{"readv", unix.SYS_READV}, {"writev", unix.SYS_WRITEV},
	{"preadv", unix.SYS_PREADV}, {"pwritev", unix.SYS_PWRITEV},
	{"lseek", unix.SYS_LSEEK}, {"fstat", unix.SYS_FSTAT},
	{"fsync", unix.SYS_FSYNC}, {"fdatasync", unix.SYS_FDATASYNC},
	{"sync_file_range", unix.SYS_SYNC_FILE_RANGE}, {"fallocate", unix.SYS_FALLOCATE},
	{"ftruncate", unix.SYS_FTRUNCATE}, {"copy_file_range", unix.SYS_COPY_FILE_RANGE},
	{"close", unix.SYS_CLOSE},
}

// Namespace flags a thread-creating clone must not carry.
const cloneNamespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET

// seccompPolicy returns the worker's filter. Everything outside the
// allow-list kills the process (SeccompKill) or fails with EPERM
// (SeccompErrno, used only to run the probes).
//
// broker, when not negative, is the descriptor of the broker socket: recvmsg
// is allowed on it and on no other descriptor (the worker asks with write).
func seccompPolicy(mode string, broker int) seccomp.Policy {
	p := seccomp.Policy{Default: seccomp.KillProcess}
	if mode == SeccompErrno {
		p.Default = seccomp.Errno(unix.EPERM)
	}
	for _, list := range [][]allowed{runtimeSyscalls, ioSyscalls} {
		for _, s := range list {
			p.Rules = append(p.Rules, seccomp.Rule{Nr: s.nr})
		}
	}
	rule := func(nr uintptr, cs ...seccomp.Cond) { p.Rules = append(p.Rules, seccomp.Rule{Nr: nr, Conds: cs}) }
	// Threads, never processes, and no new namespaces.
	rule(unix.SYS_CLONE, seccomp.AllSet(0, unix.CLONE_THREAD), seccomp.NoneSet(0, cloneNamespaceFlags))
	// No executable mappings: pure Go never needs one after start.
	rule(unix.SYS_MMAP, seccomp.NoneSet(2, unix.PROT_EXEC))
	rule(unix.SYS_MPROTECT, seccomp.NoneSet(2, unix.PROT_EXEC))
	// Signals only to the worker's own threads.
	rule(unix.SYS_TGKILL, seccomp.Equal(0, uint64(os.Getpid())))
	// Descriptor flags only: no record locks (the host's OFD locks live on
	// the same open file descriptions), leases, dup, pipe sizes or seals.
	for _, cmd := range []uint64{unix.F_GETFD, unix.F_SETFD, unix.F_GETFL, unix.F_SETFL} {
		rule(unix.SYS_FCNTL, seccomp.Equal(1, cmd))
	}
	// Page cache advice only to drop a range (commit drops the top's
	// copied data, which emptying the top frees).
	rule(unix.SYS_FADVISE64, seccomp.Equal(3, unix.FADV_DONTNEED))
	if broker >= 0 {
		rule(unix.SYS_RECVMSG, seccomp.Equal(0, uint64(broker)))
	}
	return p
}

// loadSeccomp loads the worker's filter on every thread (TSYNC), with
// no_new_privs.
func loadSeccomp(mode string, broker int) error {
	prog, err := seccompPolicy(mode, broker).Assemble()
	if err != nil {
		return err
	}
	return seccomp.Load(prog)
}

// AllowedSyscalls returns the names of the system calls the worker may make
// (some only with restricted arguments), for documentation and sandbox-check.
func AllowedSyscalls() []string {
	var names []string
	for _, list := range [][]allowed{runtimeSyscalls, ioSyscalls} {
		for _, s := range list {
			names = append(names, s.name)
		}
	}
	return append(names, "clone (CLONE_THREAD only)", "mmap/mprotect (no PROT_EXEC)",
		"tgkill (own threads)", "fcntl (F_GETFD/F_SETFD/F_GETFL/F_SETFL)",
		"fadvise64 (POSIX_FADV_DONTNEED only)",
		"recvmsg (the broker socket only)")
}
