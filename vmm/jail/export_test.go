package jail

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Hooks for the tests of package jail_test, which run the test worker of
// vmm/sandboxtest/testworker (a package that imports this one).

// NewAt returns a jail that runs every worker at level (LevelUnknown: decide
// as New does) and tells started, when set, each worker's pid.
func NewAt(level Level, started func(pid int)) *Sandbox {
	return &Sandbox{forceLevel: level, started: started}
}

// Unstartable returns a jail and a Plain whose worker executable does not
// exist.
func Unstartable() (*Sandbox, *Plain) {
	const missing = "/nonexistent/instarfs-worker"
	return &Sandbox{path: missing}, &Plain{path: missing}
}

var (
	IsWorkerID  = isWorkerID
	StatusField = statusField
)

func isWorkerID(id int) bool { return id >= workerIDFirst && id < workerIDFirst+workerIDCount }

// LandlockThreads runs in a child of the test binary: with threads OS threads
// started first (and, with dropAdmin, CAP_SYS_ADMIN dropped from every
// thread), it restricts the process with Landlock as the worker does, then
// reports on stdout how many of the threads, each trying to open "/", were
// denied, and exits.
func LandlockThreads(threads int, dropAdmin bool) {
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		fmt.Println("no landlock")
		os.Exit(0)
	}
	ready, start, opened := make(chan struct{}), make(chan struct{}), make(chan error)
	for range threads {
		go func() {
			runtime.LockOSThread() // a thread of its own, never given back
			ready <- struct{}{}
			<-start
			fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err == nil {
				unix.Close(fd)
			}
			opened <- err
		}()
	}
	for range threads {
		<-ready // every thread exists before the restriction
	}
	if dropAdmin {
		hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		data := &[2]unix.CapUserData{}
		if err := unix.Capget(hdr, &data[0]); err != nil {
			fmt.Println("capget:", err)
			os.Exit(1)
		}
		data[0].Effective &^= 1 << unix.CAP_SYS_ADMIN
		data[0].Permitted &^= 1 << unix.CAP_SYS_ADMIN
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
			fmt.Println("capset:", e)
			os.Exit(1)
		}
	}
	if err := restrictLandlock(abi); err != nil {
		fmt.Println("restrict:", err)
		os.Exit(1)
	}
	close(start)
	denied := 0
	for range threads {
		if errors.Is(<-opened, unix.EACCES) {
			denied++
		}
	}
	fmt.Printf("%d of %d threads denied\n", denied, threads)
	os.Exit(0)
}
