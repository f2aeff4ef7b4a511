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

import "instarfs/vmm/worker"

func main() { worker.Main() }
