package jail

import (
	"os"
	"sync"
	"syscall"
)

// Contained returns the kernel attributes that start a program other than the
// worker, the microvm backend's QEMU, as the jail starts its worker, and in a
// network namespace besides (QEMU has no filter of ours): in fresh user,
// mount, pid, net, ipc, uts and cgroup namespaces, and, when the host
// is root, as a host uid and gid of its own (see workerIDFirst), as the
// host's uid and gid otherwise. Inside its namespaces the program runs as
// that uid, not as root, so exec leaves it no capabilities. With namespaces
// false (the kernel refused them) only the uid switch remains. It returns the
// uid, and release, which gives the uid back once the program has exited.
//
// groups are supplementary groups the program keeps, mapped into its user
// namespace as themselves: the group that owns a device it must open, such as
// /dev/kvm for QEMU. Nothing else of the host's groups is mapped.
func Contained(namespaces bool, groups ...uint32) (attr *syscall.SysProcAttr, uid int, release func()) {
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
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups, NoSetGroups: len(groups) == 0},
	}
	if namespaces {
		attr.Cloneflags = namespaceFlags | syscall.CLONE_NEWNET | syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
		for _, g := range groups {
			if int(g) != gid {
				attr.GidMappings = append(attr.GidMappings, syscall.SysProcIDMap{ContainerID: int(g), HostID: int(g), Size: 1})
			}
		}
		// setgroups stays denied in the namespace unless the program keeps
		// groups: the kernel then needs it allowed to set them, once, before
		// exec leaves the program without the capability to change them.
		attr.GidMappingsEnableSetgroups = len(groups) > 0
	} else if os.Geteuid() == 0 {
		attr.Credential.NoSetGroups = false // drop root's supplementary groups, keep groups
	}
	return attr, uid, release
}

// NamespacesRefused reports whether an error starting a program is the
// kernel refusing its namespaces (or uid mapping), rather than, say, a
// missing executable.
func NamespacesRefused(err error) bool { return namespacesRefused(err) }
