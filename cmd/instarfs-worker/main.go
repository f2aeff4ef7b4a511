// Command instarfs-worker is the sandboxed worker of instarfs: it confines
// itself, reads one request on its standard input, parses, plans and writes
// the images it was handed as descriptors, and answers in protocol lines on
// its standard output (package proto).
//
// instarfs starts it, from the directory instarfs itself is in, with an empty
// environment but for the sandbox's settings; it is not meant to be run by
// hand. It contains every image parser and nothing of the host's: no FUSE,
// no command line parser (internal/boundary checks what it links).
package main

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"instarfs/proto"
	"instarfs/vmm/worker"
)

// init names the process in ps and top, which would otherwise show the
// number of the descriptor the host executes it through (/proc/self/fd/N).
// Package initialisation runs on the main thread, the one whose name they
// show.
func init() {
	if name, err := unix.BytePtrFromString(proto.WorkerArg0); err == nil {
		unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(name)), 0, 0, 0)
	}
}

func main() { worker.Main() }
