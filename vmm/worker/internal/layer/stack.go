package layer

import (
	"errors"
	"io"

	"instarfs/errcode"
)

// Stack is a backing chain as its guest sees it, top first: each guest byte
// comes from the first image that defines it, and reads as zero where none
// does or past the end of a shorter backing image. Its size is the top's.
//
// A Stack is safe for concurrent use when its images are.
type Stack []Image

// VirtualSize is the size of the top image.
func (s Stack) VirtualSize() int64 {
	if len(s) == 0 {
		return 0
	}
	return s[0].VirtualSize()
}

// ReadAt reads the flattened chain at off: what `qemu-img convert -O raw`
// writes there. A read reaching past VirtualSize returns the bytes before it
// and io.EOF.
func (s Stack) ReadAt(p []byte, off int64) (int, error) {
	size := s.VirtualSize()
	if off < 0 {
		return 0, errcode.New(errcode.Internal, "negative read offset %d", off)
	}
	if off >= size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	if err := s.read(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Bounded is an Image that can stop an extent at a limit: reading a few
// bytes then costs no walk of the metadata far past them.
type Bounded interface {
	ExtentBefore(off, limit int64) (Extent, error)
}

// extentBefore is l's extent at off; it may end at limit when l is Bounded.
func extentBefore(l Image, off, limit int64) (Extent, error) {
	if b, ok := l.(Bounded); ok {
		return b.ExtentBefore(off, limit)
	}
	return l.Extent(off)
}

// read fills p with the guest bytes of s at off, which must lie within the
// top; below it, bytes past an image's end read as zero.
func (s Stack) read(p []byte, off int64) error {
	if len(s) == 0 {
		clear(p)
		return nil
	}
	l := s[0]
	size := l.VirtualSize()
	for len(p) > 0 {
		if off >= size {
			clear(p)
			return nil
		}
		e, err := extentBefore(l, off, off+int64(len(p)))
		if err != nil {
			return err
		}
		if e.End() <= off {
			return errcode.New(errcode.Internal, "extent at guest offset %d made no progress", off)
		}
		n := min(int64(len(p)), e.End()-off)
		switch e.Kind {
		case Data:
			if m, err := l.ReadAt(p[:n], off); int64(m) != n {
				return readError(err, off)
			}
		case Zero:
			clear(p[:n])
		default:
			if err := s[1:].read(p[:n], off); err != nil {
				return err
			}
		}
		p = p[n:]
		off += n
	}
	return nil
}

func readError(err error, off int64) error {
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	var e *errcode.Error
	if errors.As(err, &e) {
		return err
	}
	return errcode.New(errcode.ReadFailed, "reading guest offset %d: %v", off, err)
}

// Extent returns the run of the flattened chain that starts at off (0 <= off
// < VirtualSize): Data where some image stores the bytes, Zero where the chain
// reads as zero without storing anything (zero clusters, nothing allocated,
// past a shorter backing, holes of a raw file). HostOffset is always -1: a
// run of the chain has no single place in one file.
func (s Stack) Extent(off int64) (Extent, error) {
	size := s.VirtualSize()
	if off < 0 || off >= size {
		return Extent{}, errcode.New(errcode.Internal, "extent offset %d outside the disk (%d bytes)", off, size)
	}
	n := size - off
	for _, l := range s {
		if off >= l.VirtualSize() {
			break
		}
		e, err := l.Extent(off)
		if err != nil {
			return Extent{}, err
		}
		if e.End() <= off {
			return Extent{}, errcode.New(errcode.Internal, "extent at guest offset %d made no progress", off)
		}
		n = min(n, e.End()-off)
		if e.Kind != Unallocated {
			return Extent{Start: off, Length: n, Kind: e.Kind, HostOffset: -1}, nil
		}
	}
	return Extent{Start: off, Length: n, Kind: Zero, HostOffset: -1}, nil
}
