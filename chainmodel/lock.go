package chainmodel

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
)

// QEMU image locks.
//
// QEMU (block/file-posix.c, raw_apply_lock_bytes and raw_check_lock_bytes)
// advertises what it does with an image by holding shared OFD byte-range locks
// on the image file: byte 100+i while it holds permission i, and byte 200+i
// while it does not let others have permission i. Before taking permission i
// it checks that nobody holds byte 200+i, and before refusing to share
// permission i it checks that nobody holds byte 100+i. Every lock is a read
// lock, so only the test (F_OFD_GETLK with a write lock) finds conflicts.
//
// instarfs takes exactly the locks qemu-img and qemu-io take:
//
//	read-only open:  holds consistent-read;        does not share write, resize
//	read-write open: holds consistent-read, write,
//	                 resize;                        does not share write, resize
//
// so an image that a running QEMU writes cannot be opened (IMAGE_IN_USE), and
// QEMU cannot open for writing an image that instarfs reads or writes. The locks
// live on the host's open file description; a worker that inherits the
// descriptor shares it, and takes no locks of its own.

// Permission is a QEMU block permission; its value is the bit's index.
type Permission int

// QEMU's block permissions, in qemu's bit order.
const (
	PermConsistentRead Permission = iota
	PermWrite
	PermWriteUnchanged
	PermResize
	PermGraphMod
)

// Lock byte offsets, as QEMU's RAW_LOCK_PERM_BASE and RAW_LOCK_SHARED_BASE.
const (
	lockPermBase   = 100
	lockSharedBase = 200
)

var permNames = [...]string{"consistent read", "write", "write unchanged", "resize", "graph-mod"}

func (p Permission) String() string {
	if p >= 0 && int(p) < len(permNames) {
		return permNames[p]
	}
	return fmt.Sprintf("permission %d", int(p))
}

// lockSet is what one open of an image holds and refuses to share.
type lockSet struct {
	hold, unshared []Permission
}

var (
	readLocks  = lockSet{hold: []Permission{PermConsistentRead}, unshared: []Permission{PermWrite, PermResize}}
	writeLocks = lockSet{hold: []Permission{PermConsistentRead, PermWrite, PermResize}, unshared: []Permission{PermWrite, PermResize}}
)

// LockImage takes QEMU's locks on f for a read-only or a read-write open of the
// image called name. It fails with IMAGE_IN_USE when another open file
// description — another process, or another open in this one — holds a
// conflicting lock. On a file system without OFD locks it takes none, as QEMU's
// locking=auto does.
func LockImage(f *os.File, name string, writable bool) error {
	set := readLocks
	if writable {
		set = writeLocks
	}
	fd := int(f.Fd())
	if p, busy, err := conflict(fd, set); err != nil {
		return lockError(name, err)
	} else if busy {
		return inUse(name, p)
	}
	for _, p := range set.hold {
		if err := setLock(fd, lockPermBase+int64(p), unix.F_RDLCK); err != nil {
			UnlockImage(f)
			return lockError(name, err)
		}
	}
	for _, p := range set.unshared {
		if err := setLock(fd, lockSharedBase+int64(p), unix.F_RDLCK); err != nil {
			UnlockImage(f)
			return lockError(name, err)
		}
	}
	return nil
}

// conflict tests whether another open file description holds locks that set
// conflicts with, in QEMU's order: first whether anybody refuses what set
// holds, then whether anybody holds what set refuses to share. It takes none.
func conflict(fd int, set lockSet) (Permission, bool, error) {
	for _, p := range set.hold {
		if busy, err := testLock(fd, lockSharedBase+int64(p)); err != nil || busy {
			return p, busy, err
		}
	}
	for _, p := range set.unshared {
		if busy, err := testLock(fd, lockPermBase+int64(p)); err != nil || busy {
			return p, busy, err
		}
	}
	return 0, false, nil
}

// HeldByOther reports whether another process (or another open in this one)
// holds f's image so that opening it to read without force share (-U) would
// fail with IMAGE_IN_USE: a running VM writing it. It takes no lock.
func HeldByOther(f *os.File) bool {
	_, busy, err := conflict(int(f.Fd()), readLocks)
	return err == nil && busy
}

// UnlockImage drops every QEMU lock f's open file description holds. Closing
// the last descriptor of the description drops them too; unlocking first
// matters when a worker may still hold a copy.
func UnlockImage(f *os.File) {
	fd := int(f.Fd())
	setLock(fd, lockPermBase, unix.F_UNLCK)
	setLock(fd, lockSharedBase, unix.F_UNLCK)
}

// lockUnsupported reports whether err means the file system has no OFD locks.
func lockUnsupported(err error) bool {
	return errors.Is(err, unix.ENOLCK) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}

func lockError(name string, err error) error {
	if lockUnsupported(err) {
		return nil
	}
	return errcode.New(errcode.ImageInUse, "could not lock '%s': %v", name, err)
}

func inUse(name string, p Permission) error {
	return errcode.New(errcode.ImageInUse, "image '%s' is in use: another process holds its %q lock (is a virtual machine using it?)", name, p.String())
}

// testLock reports whether another open file description holds a lock on byte
// off.
func testLock(fd int, off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

// setLock sets (typ F_RDLCK) or clears (F_UNLCK) a lock. Clearing covers the
// whole permission range starting at off.
func setLock(fd int, off int64, typ int16) error {
	n := int64(1)
	if typ == unix.F_UNLCK {
		n = int64(len(permNames))
	}
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: n}
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
}
