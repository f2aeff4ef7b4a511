package jail

import (
	"os"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// runtimeSyscalls are the system calls the Go runtime (CGO_ENABLED=0) makes
// once it is running: memory, scheduling, signals, timers and the netpoller.
// The list was established with strace on a stress workload (concurrent blocking
// preads that spawn threads, large allocations with forced GC and
// FreeOSMemory, timers, tight loops that trigger asynchronous preemption) and
// is checked by the Stress test of the conformance suite (vmm/sandboxtest).
var runtimeSyscalls = []string{
	"munmap", "madvise", "brk", "futex", "sched_yield",
	"nanosleep", "clock_nanosleep", "clock_gettime",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	"gettid", "getpid", "exit", "exit_group", "sched_getaffinity",
	"getrandom", "restart_syscall",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "eventfd2",
}

// ioSyscalls are the descriptor operations the worker's work needs: reading and
// writing images and stdio, block status (lseek SEEK_DATA/SEEK_HOLE), size,
// durability (and starting writeback early), hole punching and truncation, and
// copying a range from one image to another in the kernel (copy_file_range:
// like a pread and a pwrite, it works only between descriptors the worker
// already holds, and only into one opened for writing).
var ioSyscalls = []string{
	"read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev",
	"lseek", "fstat", "fsync", "fdatasync", "sync_file_range", "fallocate", "ftruncate",
	"copy_file_range", "close",
}

// Namespace flags a thread-creating clone must not carry.
const cloneNamespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET

// seccompFilter returns the worker's filter. Everything outside the allow-list
// kills the process (SeccompKill) or fails with EPERM (SeccompErrno, used only to
// run the probes). The filter is loaded with no_new_privs and TSYNC, so it
// covers every thread.
//
// broker, when not negative, is the descriptor of the broker socket: recvmsg
// is allowed on it and on no other descriptor (the worker asks with write).
func seccompFilter(mode string, broker int) seccomp.Filter {
	def := seccomp.ActionKillProcess
	if mode == SeccompErrno {
		def = seccomp.ActionErrno // EPERM
	}
	cond := func(name string, cs ...seccomp.Condition) seccomp.NameWithConditions {
		return seccomp.NameWithConditions{Name: name, Conditions: cs}
	}
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: def,
			Syscalls: []seccomp.SyscallGroup{
				{Action: seccomp.ActionAllow, Names: append(append([]string{}, runtimeSyscalls...), ioSyscalls...)},
				{Action: seccomp.ActionAllow, NamesWithCondtions: []seccomp.NameWithConditions{
					// Threads, never processes, and no new namespaces.
					cond("clone",
						seccomp.Condition{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD},
						seccomp.Condition{Argument: 0, Operation: seccomp.BitsNotSet, Value: cloneNamespaceFlags}),
					// No executable mappings: pure Go never needs one after start.
					cond("mmap", seccomp.Condition{Argument: 2, Operation: seccomp.BitsNotSet, Value: unix.PROT_EXEC}),
					cond("mprotect", seccomp.Condition{Argument: 2, Operation: seccomp.BitsNotSet, Value: unix.PROT_EXEC}),
					// Signals only to the worker's own threads.
					cond("tgkill", seccomp.Condition{Argument: 0, Operation: seccomp.Equal, Value: uint64(os.Getpid())}),
					// Descriptor flags only: no record locks (the host's OFD
					// locks live on the same open file descriptions), leases,
					// dup, pipe sizes or seals.
					cond("fcntl", seccomp.Condition{Argument: 1, Operation: seccomp.Equal, Value: unix.F_GETFD}),
					cond("fcntl", seccomp.Condition{Argument: 1, Operation: seccomp.Equal, Value: unix.F_SETFD}),
					cond("fcntl", seccomp.Condition{Argument: 1, Operation: seccomp.Equal, Value: unix.F_GETFL}),
					cond("fcntl", seccomp.Condition{Argument: 1, Operation: seccomp.Equal, Value: unix.F_SETFL}),
				}},
			},
		},
	}
	if broker >= 0 {
		f.Policy.Syscalls = append(f.Policy.Syscalls, seccomp.SyscallGroup{Action: seccomp.ActionAllow, NamesWithCondtions: []seccomp.NameWithConditions{
			cond("recvmsg", seccomp.Condition{Argument: 0, Operation: seccomp.Equal, Value: uint64(broker)}),
		}})
	}
	return f
}

func loadSeccomp(mode string, broker int) error {
	return seccomp.LoadFilter(seccompFilter(mode, broker))
}

// AllowedSyscalls returns the names of the system calls the worker may make
// (some only with restricted arguments), for documentation and sandbox-check.
func AllowedSyscalls() []string {
	names := append(append([]string{}, runtimeSyscalls...), ioSyscalls...)
	return append(names, "clone (CLONE_THREAD only)", "mmap/mprotect (no PROT_EXEC)",
		"tgkill (own threads)", "fcntl (F_GETFD/F_SETFD/F_GETFL/F_SETFL)",
		"recvmsg (the broker socket only)")
}
