package jail

import (
	"bytes"
	"fmt"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"instarfs/proto"

	"golang.org/x/sys/unix"
)

// Probe expectations.
const (
	ExpectRefused = "refused" // the sandbox must refuse the call
	ExpectAllowed = "allowed" // the worker's work needs the call to work
)

// ProbeReport is the result of proto.OpSandboxProbe: how the worker is confined
// and what each probe did.
type ProbeReport struct {
	Confinement Status        `json:"confinement"`
	Probes      []ProbeResult `json:"probes"`
}

// ProbeResult is one attempt made inside the worker.
type ProbeResult struct {
	Name   string `json:"name"`
	Expect string `json:"expect"`
	// OK is true when the outcome matched the expectation. A refused probe is
	// OK only when the seccomp filter refused it (EPERM), or for a write or a
	// copy to a read-only descriptor, when the kernel did (EBADF).
	OK bool `json:"ok"`
	// Errno is the error's name ("EPERM"), empty when the call succeeded.
	Errno string `json:"errno,omitempty"`
	// Detail says what was tried.
	Detail string `json:"detail"`
}

// Probe names refused by the sandbox.
const (
	ProbeOpenHostFile  = "open-host-file"
	ProbeOpenRoot      = "open-root"
	ProbeOpenatDotDot  = "openat-dotdot"
	ProbeSocketInet    = "socket-inet"
	ProbeSocketUnix    = "socket-unix"
	ProbeSocketNetlink = "socket-netlink"
	ProbeFork          = "fork"
	ProbeClone3        = "clone3"
	ProbeExecve        = "execve"
	ProbePtrace        = "ptrace"
	ProbeMount         = "mount"
	ProbeUnshare       = "unshare"
	ProbeMemfd         = "memfd-create"
	ProbeIoctlImage    = "ioctl-image"
	ProbeWriteReadOnly = "write-read-only-fd"
	ProbeCopyReadOnly  = "copy-to-read-only-fd"
	ProbeLockImage     = "fcntl-lock-image"
	ProbeKill          = "signal-process"
	ProbeMmapExec      = "mmap-exec"
	ProbeIoUring       = "io-uring"
	ProbeRecvmsgOther  = "recvmsg-other-fd"
	ProbeSendmsgFD     = "sendmsg-descriptor"
	ProbeFadviseOther  = "fadvise-willneed"
)

// ProbeNoInheritedFD checks that Confine closed what the worker inherited.
const ProbeNoInheritedFD = "no-inherited-fd"

// RunProbes runs the sandbox probes inside a worker, for proto.OpSandboxProbe.
// The request's images are at fds proto.FirstImageFD..; the probes use the
// first read-only and the first writable one when there are some (sandbox-check
// passes one of each, both scratch files).
//
// Under the kill filter the first refused probe would kill the worker, so the
// jail backend loads the filter in errno mode (EPERM) for this operation only:
// the allow-list is the same, and each refusal shows as EPERM. Sandbox-check's
// violation run and the conformance suite (vmm/sandboxtest) check the kill
// mode separately.
//
// Probes are harmless when they succeed (in an unconfined worker): they target
// paths that do not exist, directories that cannot be executed, or scratch
// descriptors.
func RunProbes(req proto.Request) ProbeReport {
	ro, rw := -1, -1
	for i, im := range req.Images {
		fd := proto.FirstImageFD + i
		if im.Writable && rw < 0 {
			rw = fd
		}
		if !im.Writable && ro < 0 {
			ro = fd
		}
	}
	r := ProbeReport{Confinement: CurrentStatus()}
	add := func(name, expect, detail string, err error) {
		res := ProbeResult{Name: name, Expect: expect, Detail: detail}
		var errno syscall.Errno
		if err != nil {
			errno = toErrno(err)
			res.Errno = unix.ErrnoName(errno)
			if res.Errno == "" {
				res.Errno = errno.Error()
			}
		}
		switch expect {
		case ExpectRefused:
			res.OK = errno == unix.EPERM || ((name == ProbeWriteReadOnly || name == ProbeCopyReadOnly) && errno == unix.EBADF)
		case ExpectAllowed:
			res.OK = err == nil
		}
		r.Probes = append(r.Probes, res)
	}
	refuse := func(name, detail string, err error) { add(name, ExpectRefused, detail, err) }
	allow := func(name, detail string, err error) { add(name, ExpectAllowed, detail, err) }
	// allowFile is allow for a call that a block device (the microvm guest's
	// drives) does not support: EINVAL from the kernel shows that the filter
	// let the call through, which is what the probe is about.
	allowFile := func(name, detail string, fd int, err error) {
		if err == unix.EINVAL && isBlockDevice(fd) {
			detail, err = detail+" (a block device: EINVAL from the kernel)", nil
		}
		allow(name, detail, err)
	}

	refuse(ProbeOpenHostFile, "openat(AT_FDCWD, /etc/passwd)", closeIfOpened(unix.Openat(unix.AT_FDCWD, "/etc/passwd", unix.O_RDONLY|unix.O_CLOEXEC, 0)))
	refuse(ProbeOpenRoot, "openat(AT_FDCWD, /)", closeIfOpened(unix.Openat(unix.AT_FDCWD, "/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)))
	base := unix.AT_FDCWD
	if ro >= 0 {
		base = ro
	}
	refuse(ProbeOpenatDotDot, "openat(image fd, ..)", closeIfOpened(unix.Openat(base, "..", unix.O_RDONLY|unix.O_CLOEXEC, 0)))
	refuse(ProbeSocketInet, "socket(AF_INET, SOCK_STREAM)", closeIfOpened(unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)))
	refuse(ProbeSocketUnix, "socket(AF_UNIX, SOCK_STREAM)", closeIfOpened(unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)))
	refuse(ProbeSocketNetlink, "socket(AF_NETLINK, NETLINK_ROUTE)", closeIfOpened(unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)))
	refuse(ProbeFork, "clone(SIGCHLD), a new process", probeFork())
	refuse(ProbeClone3, "clone3(NULL, 0)", errnoErr(unix.Syscall(unix.SYS_CLONE3, 0, 0, 0)))
	refuse(ProbeExecve, "execve(/)", probeExecve())
	refuse(ProbePtrace, "ptrace(PTRACE_PEEKUSER, 1)", errnoErr(unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_PEEKUSR, 1, 0, 0, 0, 0)))
	refuse(ProbeMount, "mount(tmpfs, /nonexistent)", unix.Mount("none", "/nonexistent-instarfs-probe", "tmpfs", 0, ""))
	refuse(ProbeUnshare, "unshare(CLONE_NEWUSER)", unix.Unshare(unix.CLONE_NEWUSER))
	refuse(ProbeMemfd, "memfd_create", closeIfOpened(unix.MemfdCreate("instarfs-probe", unix.MFD_CLOEXEC)))
	ioctlFD := 0
	if ro >= 0 {
		ioctlFD = ro
	}
	var n int32
	// TIOCINQ is FIONREAD.
	refuse(ProbeIoctlImage, "ioctl(image fd, FIONREAD)", errnoErr(unix.Syscall(unix.SYS_IOCTL, uintptr(ioctlFD), unix.TIOCINQ, uintptr(unsafe.Pointer(&n)))))
	var err error
	if ro >= 0 {
		_, err = unix.Pwrite(ro, []byte{0}, 0)
	} else {
		_, err = unix.Write(0, []byte{0}) // stdin: the read end of a pipe
	}
	refuse(ProbeWriteReadOnly, "write to a read-only descriptor", err)
	// copy_file_range is allowed (below): it only reaches descriptors the
	// worker holds, and writes only where a pwrite could. (Between block
	// devices, the microvm guest's drives, the kernel refuses every copy
	// with EINVAL.)
	if ro >= 0 && rw >= 0 && !isBlockDevice(ro) {
		refuse(ProbeCopyReadOnly, "copy_file_range(writable image -> read-only image)", probeCopy(rw, ro))
	}
	lockFD := ioctlFD
	if rw >= 0 {
		lockFD = rw
	}
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0}
	refuse(ProbeLockImage, "fcntl(image fd, F_OFD_SETLK, unlock)", unix.FcntlFlock(uintptr(lockFD), unix.F_OFD_SETLK, &lk))
	refuse(ProbeKill, "kill(1, 0)", unix.Kill(1, 0))
	refuse(ProbeMmapExec, "mmap(PROT_EXEC)", probeMmapExec())
	refuse(ProbeIoUring, "io_uring_setup", probeIoUring())
	refuse(ProbeRecvmsgOther, "recvmsg(stdin), not the broker socket", probeRecvmsg(0))
	// On stdout, not the broker socket: an unconfined worker's message
	// would reach the host's broker, which takes it for a broken worker.
	refuse(ProbeSendmsgFD, "sendmsg(stdout, SCM_RIGHTS of stdin)", probeSendFD(1))
	refuse(ProbeFadviseOther, "posix_fadvise(stdin, WILLNEED), advice other than DONTNEED", unix.Fadvise(0, 0, 0, unix.FADV_WILLNEED))

	past := proto.FirstImageFD + len(req.Images)
	if req.Broker {
		past++
	}
	if fd, err := inheritedFD(past); err != nil {
		allow(ProbeNoInheritedFD, fmt.Sprintf("descriptor %d past the images lacks close-on-exec: inherited, not closed", fd), err)
	} else {
		allow(ProbeNoInheritedFD, "every descriptor past the images is the worker's own (close-on-exec)", nil)
	}
	allow("new-thread", "a goroutine locked to a new OS thread", probeThread())
	allow("timer", "time.Sleep(1ms)", probeTimer())
	allow("getrandom", "getrandom(16)", probeRandom())
	if ro >= 0 {
		var st unix.Stat_t
		allow("fstat-image", "fstat(read-only image)", unix.Fstat(ro, &st))
		buf := make([]byte, 4096)
		_, err := unix.Pread(ro, buf, 0)
		allow("pread-image", "pread(read-only image, 4 KiB)", err)
		_, err = unix.Seek(ro, 0, unix.SEEK_DATA)
		allowFile("seek-data-image", "lseek(read-only image, SEEK_DATA)", ro, err)
	}
	if rw >= 0 {
		allow("pwrite-image", "pwrite + fdatasync + pread back on the writable image", probeWrite(rw))
		allow("punch-hole-image", "fallocate(PUNCH_HOLE) on the writable image",
			unix.Fallocate(rw, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096))
		allowFile("ftruncate-image", "ftruncate(writable image, 64 KiB)", rw, unix.Ftruncate(rw, 64<<10))
	}
	if ro >= 0 {
		allow("drop-cache-image", "posix_fadvise(read-only image, DONTNEED)", unix.Fadvise(ro, 0, 0, unix.FADV_DONTNEED))
	}
	if ro >= 0 && rw >= 0 {
		allowFile("copy-range-image", "copy_file_range(read-only image -> writable image, 4 KiB)", rw, probeCopy(ro, rw))
	}
	return r
}

// OK reports whether every probe matched its expectation and the worker ran
// with a seccomp filter.
func (r ProbeReport) OK() bool {
	if r.Confinement.Seccomp == "" || len(r.Probes) == 0 {
		return false
	}
	for _, p := range r.Probes {
		if !p.OK {
			return false
		}
	}
	return true
}

// Violate makes a system call outside the allow-list, for
// proto.OpSandboxViolate. Under the kill filter it does not return. It returns
// an error when the call was refused without killing the worker (errno mode,
// or an unconfined worker: then the call was harmless).
func Violate() error {
	fd, err := unix.Openat(unix.AT_FDCWD, "/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		return unavailable("the forbidden call openat(/) succeeded: the worker is not confined")
	}
	return unavailable("the forbidden call openat(/) failed with %v instead of killing the worker", err)
}

func toErrno(err error) syscall.Errno {
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}

func errnoErr(_, _ uintptr, e syscall.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

func isBlockDevice(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK
}

func closeIfOpened(fd int, err error) error {
	if err == nil {
		unix.Close(fd)
	}
	return err
}

// probeFork tries to create a process. If that works (unconfined), the child
// exits at once without running any Go code beyond the system call.
func probeFork() error {
	pid, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		return e
	}
	if pid == 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	var ws syscall.WaitStatus
	syscall.Wait4(int(pid), &ws, 0, nil)
	return nil
}

// probeExecve tries to execute a directory: refused with EPERM by seccomp, with
// EACCES by the kernel otherwise, so it never replaces the worker.
func probeExecve() error {
	path, _ := unix.BytePtrFromString("/")
	argv := []*byte{path, nil}
	envv := []*byte{nil}
	_, _, e := unix.Syscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(path)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])))
	if e == 0 {
		return nil
	}
	return e
}

func probeMmapExec() error {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err == nil {
		unix.Munmap(b)
	}
	return err
}

func probeIoUring() error {
	var params [120]byte // struct io_uring_params, zeroed
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params[0])), 0)
	if e != 0 {
		return e
	}
	unix.Close(int(fd))
	return nil
}

// inheritedFD returns the first descriptor from first on (up to
// LimitNOFILE) without FD_CLOEXEC, which the worker can only have inherited
// through exec, and EBADFD; or nil when there is none.
func inheritedFD(first int) (int, error) {
	for fd := first; fd < LimitNOFILE; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err == nil && flags&unix.FD_CLOEXEC == 0 {
			return fd, unix.EBADFD
		}
	}
	return 0, nil
}

func probeThread() error {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // exiting locked ends the thread, too
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(5 * time.Second):
		return syscall.ETIMEDOUT
	}
}

func probeTimer() error {
	time.Sleep(time.Millisecond)
	return nil
}

func probeRandom() error {
	var b [16]byte
	_, err := unix.Getrandom(b[:], 0)
	return err
}

func probeWrite(fd int) error {
	want := []byte("instarfs sandbox probe")
	if _, err := unix.Pwrite(fd, want, 8192); err != nil {
		return err
	}
	if err := unix.Fdatasync(fd); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := unix.Pread(fd, got, 8192); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return syscall.EIO
	}
	return nil
}

// probeCopy copies 4 KiB from the start of src to offset 16 KiB of dst in
// the kernel.
func probeCopy(src, dst int) error {
	roff, woff := int64(0), int64(16<<10)
	_, err := unix.CopyFileRange(src, &roff, dst, &woff, 4096, 0)
	return err
}

// probeRecvmsg tries to receive a message on fd without waiting.
func probeRecvmsg(fd int) error {
	buf := make([]byte, 16)
	_, _, _, _, err := unix.Recvmsg(fd, buf, make([]byte, 64), unix.MSG_DONTWAIT)
	return err
}

// probeSendFD tries to send the worker's stdin as a descriptor on fd.
func probeSendFD(fd int) error {
	return unix.Sendmsg(fd, []byte{'x'}, unix.UnixRights(0), nil, unix.MSG_DONTWAIT)
}
