package proto

import (
	"encoding/json"
	"io"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
)

// Frame statuses of the worker's replies.
const (
	FrameOK    = 0
	FrameError = 1
	// FrameShared is an answer the worker wrote at the start of the shared
	// memory (Job.Shared) instead of after the header: the length says how
	// long it is, and no body follows. It saves the pipe's two copies.
	FrameShared = 2
)

// MaxFrameRequest bounds one request frame's body.
const MaxFrameRequest = 4 << 10

// WorkerShared maps, in a worker, the memory its session shares with the
// host: the descriptor after the images of req. It returns nil when the
// request shares none.
func WorkerShared(req Request) ([]byte, error) {
	if req.Shared <= 0 {
		return nil, nil
	}
	m, err := unix.Mmap(FirstImageFD+len(req.Images), 0, req.Shared, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, errcode.New(errcode.WorkerProtocol, "mapping the shared memory: %v", err)
	}
	return m, nil
}

// SessionInput returns the worker's standard input r positioned at the first
// request frame, for a worker that decoded the request line with dec: it
// drops the line's newline, which the decoder leaves unread.
func SessionInput(dec *json.Decoder, r io.Reader) (io.Reader, error) {
	in := io.MultiReader(dec.Buffered(), r)
	var nl [1]byte
	if _, err := io.ReadFull(in, nl[:]); err != nil || nl[0] != '\n' {
		return nil, errcode.New(errcode.WorkerProtocol, "the request line does not end with a newline")
	}
	return in, nil
}
