//go:build mountexec

package main

import (
	"os"
	"syscall"

	"instarfs/errcode"
)

// mountExecutable is the name of the executable that mounts: this package
// built without the mountexec tag, installed next to instarfs.
const mountExecutable = "instarfs-mount"

// mount executes instarfs-mount, from the directory of this executable, on
// the same command line: it mounts in its own process, which links the FUSE
// library this one does not (about 0.3 ms of every command's start).
func (a *app) mount(mountConfig) int {
	path := siblingPath(mountExecutable)
	err := syscall.Exec(path, os.Args, os.Environ())
	return fail(errcode.New(errcode.MountFailed, "cannot run %s: %v; instarfs mounts with the instarfs-mount installed next to it (`make install` installs it)", path, err))
}
