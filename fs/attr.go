package fs

import (
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Node attributes mirror the host. Every node shows the owner and group of the
// host file it stands for, and permission bits derived from that file's, so
// that with default_permissions (--allow-other) the kernel lets a user do in
// the mount what the host lets them do with the file:
//
//	directory           the host directory's bits
//	image directory     r-x wherever the image file has r
//	generated files     the image file's r bits
//	control files       the image file's w bits, and r where both w and the image's r
//	backing             0777, as every symlink
func setAttr(a *fuse.Attr, kind int, st *unix.Stat_t) {
	a.Mode = fileType(kind) | perm(kind, st.Mode)
	a.Nlink = 1
	if a.Mode&unix.S_IFMT == unix.S_IFDIR {
		a.Nlink = 2
	}
	a.Uid, a.Gid = st.Uid, st.Gid
	setTimes(a, st)
}

// fileType is the file type bits of a node of kind.
func fileType(kind int) uint32 {
	switch kind {
	case kindDir, kindImage:
		return unix.S_IFDIR
	case kindBacking:
		return unix.S_IFLNK
	}
	return unix.S_IFREG
}

// perm is the permission bits of a node of kind shown for a host file of mode
// host.
func perm(kind int, host uint32) uint32 {
	r, w := host&0o444, host&0o222
	switch kind {
	case kindDir:
		return host & 0o1777
	case kindImage:
		return r | r>>2
	case kindBacking:
		return 0o777
	case kindRebase, kindCommit, kindRepair:
		return w | w<<1&r
	}
	return r
}

// dots are the "." and ".." entries a directory listing starts with, as
// readdir(3) users (ls -a, find) expect. The root's ".." is itself.
func dots(dir *gofs.Inode) []fuse.DirEntry {
	self := dir.StableAttr().Ino
	parent := self
	if _, p := dir.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	return []fuse.DirEntry{
		{Name: ".", Mode: unix.S_IFDIR, Ino: self},
		{Name: "..", Mode: unix.S_IFDIR, Ino: parent},
	}
}

// setTimes copies a host file's times into a.
func setTimes(a *fuse.Attr, st *unix.Stat_t) {
	a.Atime, a.Atimensec = uint64(st.Atim.Sec), uint32(st.Atim.Nsec)
	a.Mtime, a.Mtimensec = uint64(st.Mtim.Sec), uint32(st.Mtim.Nsec)
	a.Ctime, a.Ctimensec = uint64(st.Ctim.Sec), uint32(st.Ctim.Nsec)
}
