package jail

import (
	"os"
	"sync"
	"syscall"
)

// Contained returns the kernel attributes that start a program other than the
// worker, the microvm backend's QEMU, as the jail starts its worker: in fresh
// user, mount, pid, net, ipc, uts and cgroup namespaces, and, when the host
// is root, as a host uid and gid of its own (see workerIDFirst), as the
// host's uid and gid otherwise. Inside its namespaces the program runs as
// that uid, not as root, so exec leaves it no capabilities. With namespaces
// false (the kernel refused them) only the uid switch remains. It returns the
// uid, and release, which gives the uid back once the program has exited.
func Contained(namespaces bool) (attr *syscall.SysProcAttr, uid int, release func()) {
	uid, gid := os.Getuid(), os.Getgid()
	release = func() {}
	if os.Geteuid() == 0 {
		id := workerIDs.take()
		uid, gid = id, id
		var once sync.Once
		release = func() { once.Do(func() { workerIDs.release(id) }) }
	}
	attr = &syscall.SysProcAttr{
		Setsid:     true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true},
	}
	if namespaces {
		attr.Cloneflags = namespaceFlags | syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	} else if os.Geteuid() == 0 {
		attr.Credential.NoSetGroups = false // drop root's supplementary groups
	}
	return attr, uid, release
}

// NamespacesRefused reports whether an error starting a program is the
// kernel refusing its namespaces (or uid mapping), rather than, say, a
// missing executable.
func NamespacesRefused(err error) bool { return namespacesRefused(err) }
