package jail

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/vmm/jail/internal/seccomp"
	"instarfs/vmm/jail/internal/seccomp/seccomptest"
)

// wantAllowed is the worker's policy, stated on its own: whether the filter
// must allow system call nr with args when the broker socket is broker (-1:
// none).
func wantAllowed(nr uintptr, args [6]uint64, broker int) bool {
	switch nr {
	case unix.SYS_MUNMAP, unix.SYS_MADVISE, unix.SYS_BRK, unix.SYS_FUTEX, unix.SYS_SCHED_YIELD,
		unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP, unix.SYS_CLOCK_GETTIME,
		unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN, unix.SYS_SIGALTSTACK,
		unix.SYS_GETTID, unix.SYS_GETPID, unix.SYS_EXIT, unix.SYS_EXIT_GROUP,
		unix.SYS_SCHED_GETAFFINITY, unix.SYS_GETRANDOM, unix.SYS_RESTART_SYSCALL,
		unix.SYS_EPOLL_CREATE1, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2,
		unix.SYS_EVENTFD2,
		unix.SYS_READ, unix.SYS_WRITE, unix.SYS_PREAD64, unix.SYS_PWRITE64,
		unix.SYS_READV, unix.SYS_WRITEV, unix.SYS_PREADV, unix.SYS_PWRITEV,
		unix.SYS_LSEEK, unix.SYS_FSTAT, unix.SYS_FSYNC, unix.SYS_FDATASYNC,
		unix.SYS_SYNC_FILE_RANGE, unix.SYS_FALLOCATE, unix.SYS_FTRUNCATE,
		unix.SYS_COPY_FILE_RANGE, unix.SYS_CLOSE:
		return true
	case unix.SYS_CLONE:
		return args[0]&unix.CLONE_THREAD != 0 && args[0]&cloneNamespaceFlags == 0
	case unix.SYS_MMAP, unix.SYS_MPROTECT:
		return args[2]&unix.PROT_EXEC == 0
	case unix.SYS_TGKILL:
		return args[0] == uint64(os.Getpid())
	case unix.SYS_FCNTL:
		switch args[1] {
		case unix.F_GETFD, unix.F_SETFD, unix.F_GETFL, unix.F_SETFL:
			return true
		}
	case unix.SYS_RECVMSG:
		return broker >= 0 && args[0] == uint64(broker)
	case unix.SYS_FADVISE64:
		return args[3] == unix.FADV_DONTNEED
	}
	return false
}

// TestSeccompPolicy runs the worker's filter on every system call number up
// to 1023 (both architectures' tables end below 500) with arguments around
// every value a condition tests, each in every argument position, and checks
// each decision against wantAllowed.
func TestSeccompPolicy(t *testing.T) {
	pid := uint64(os.Getpid())
	const broker = 5
	// The Go runtime's clone flags for a new thread.
	const goClone = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
		unix.CLONE_SYSVSEM | unix.CLONE_THREAD
	values := []uint64{
		0, 1, ^uint64(0), 1 << 32, 1 << 63, 0xffffffff, 0xffffffff00000000,
		unix.CLONE_THREAD, goClone, unix.CLONE_THREAD << 32, goClone | 1<<32, goClone &^ unix.CLONE_THREAD,
		unix.PROT_READ | unix.PROT_WRITE, unix.PROT_EXEC, unix.PROT_READ | unix.PROT_EXEC, unix.PROT_EXEC << 32,
		pid, pid + 1, pid - 1, pid | 1<<32, pid << 32,
		unix.F_GETFD, unix.F_SETFD, unix.F_GETFL, unix.F_SETFL, unix.F_GETFD | 1<<32, unix.F_SETFL | 1<<63,
		unix.F_DUPFD, unix.F_DUPFD_CLOEXEC, unix.F_SETLK, unix.F_SETLKW, unix.F_OFD_SETLK, unix.F_SETLEASE,
		unix.F_SETPIPE_SZ, unix.F_ADD_SEALS, unix.F_SETOWN,
		broker, broker + 1, broker - 1, broker | 1<<32, broker << 32,
		unix.FADV_DONTNEED, unix.FADV_WILLNEED, unix.FADV_NOREUSE, unix.FADV_DONTNEED | 1<<32, unix.FADV_DONTNEED << 32,
	}
	for ns := uint64(1); ns != 0; ns <<= 1 {
		if cloneNamespaceFlags&ns != 0 {
			values = append(values, goClone|ns, ns, goClone|ns<<32)
		}
	}
	var argSets [][6]uint64
	for _, fill := range []uint64{0, ^uint64(0)} {
		for i := range 6 {
			for _, v := range values {
				a := [6]uint64{fill, fill, fill, fill, fill, fill}
				a[i] = v
				argSets = append(argSets, a)
			}
		}
	}
	// A thread's clone, an anonymous mapping, a signal to the process's own
	// thread and a descriptor flag, as the runtime makes them.
	argSets = append(argSets,
		[6]uint64{goClone, 0xc000100000, 0, 0, 0xc000010000},
		[6]uint64{0, 1 << 26, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANON, ^uint64(0), 0},
		[6]uint64{pid, pid + 3, uint64(unix.SIGURG)},
		[6]uint64{3, unix.F_SETFD, unix.FD_CLOEXEC})

	for _, tt := range []struct {
		mode   string
		broker int
		deny   seccomp.Action
	}{
		{SeccompKill, -1, seccomp.KillProcess},
		{SeccompKill, broker, seccomp.KillProcess},
		{SeccompErrno, broker, seccomp.Errno(unix.EPERM)},
	} {
		t.Run(fmt.Sprintf("%s broker %d", tt.mode, tt.broker), func(t *testing.T) {
			prog, err := seccompPolicy(tt.mode, tt.broker).Assemble()
			if err != nil {
				t.Fatal(err)
			}
			vm, err := seccomptest.NewVM(prog)
			if err != nil {
				t.Fatal(err)
			}
			allowed := 0
			for nr := uintptr(0); nr < 1024; nr++ {
				for _, args := range argSets {
					got, err := vm.Run(seccomptest.Call(nr, args[:]...))
					if err != nil {
						t.Fatal(err)
					}
					want := tt.deny
					if wantAllowed(nr, args, tt.broker) {
						want = seccomp.Allow
						allowed++
					}
					if got != want {
						t.Fatalf("system call %d with arguments %#x: %#x, want %#x", nr, args, got, want)
					}
				}
			}
			if allowed == 0 {
				t.Fatal("nothing allowed")
			}
		})
	}
}

// TestSeccompABI: an allowed call made through another ABI is refused: it
// kills the worker for another architecture, and gets the filter's default
// for x32 on amd64.
func TestSeccompABI(t *testing.T) {
	for _, mode := range []string{SeccompKill, SeccompErrno} {
		prog, err := seccompPolicy(mode, 5).Assemble()
		if err != nil {
			t.Fatal(err)
		}
		vm, err := seccomptest.NewVM(prog)
		if err != nil {
			t.Fatal(err)
		}
		def := seccomp.KillProcess
		if mode == SeccompErrno {
			def = seccomp.Errno(unix.EPERM)
		}
		for _, nr := range []uintptr{unix.SYS_READ, unix.SYS_WRITE, unix.SYS_FUTEX, unix.SYS_RECVMSG} {
			d := seccomptest.Call(nr, 5)
			if got, _ := vm.Run(d); got != seccomp.Allow {
				t.Fatalf("%s: call %d: %#x, want allowed", mode, nr, got)
			}
			for _, arch := range []uint32{unix.AUDIT_ARCH_I386, unix.AUDIT_ARCH_X86_64, unix.AUDIT_ARCH_AARCH64, unix.AUDIT_ARCH_ARM} {
				if arch == seccomp.Arch {
					continue
				}
				d := d
				d.Arch = arch
				if got, _ := vm.Run(d); got != seccomp.KillProcess {
					t.Errorf("%s: call %d with arch %#x: %#x, want the worker killed", mode, nr, arch, got)
				}
			}
			if seccomp.Arch == unix.AUDIT_ARCH_X86_64 {
				d := d
				d.Nr |= 0x40000000
				if got, _ := vm.Run(d); got != def {
					t.Errorf("%s: x32 call %#x: %#x, want %#x", mode, d.Nr, got, def)
				}
			}
		}
	}
}
