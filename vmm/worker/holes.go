package worker

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
)

// fileHoles finds data and holes in an image file with SEEK_DATA/SEEK_HOLE.
type fileHoles struct{ f *os.File }

func (h fileHoles) Status(off, n int64) (bool, int64, error) {
	fd := int(h.f.Fd())
	data, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false, n, nil // a hole up to the end of the file, and past it
	}
	if err != nil {
		return true, n, nil // no hole information: everything is data
	}
	if data > off {
		return false, min(n, data-off), nil
	}
	hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil {
		return false, 0, errcode.New(errcode.ReadFailed, "finding holes in %s: %v", h.f.Name(), err)
	}
	return true, min(n, hole-off), nil
}
