package layer

import (
	"errors"
	"io"

	"instarfs/errcode"
)

// Stack is a backing chain as its guest sees it, top first: each guest byte
// comes from the first image that defines it, and reads as zero where none
// does or past the end of a shorter backing image. Its size is the top's; an
// empty Stack has size 0 and reads as zero everywhere.
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
	if err := s.Fill(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Fill fills p with the guest bytes of s at off; past the end of the top, as
// past the end of any image of the chain, they read as zero. An image that
// reads fewer bytes than its extents define fails with READ_FAILED (or the
// named error it returned).
func (s Stack) Fill(p []byte, off int64) error {
	if off < 0 {
		return errcode.New(errcode.Internal, "negative read offset %d", off)
	}
	for len(p) > 0 {
		if off >= s.VirtualSize() {
			clear(p)
			return nil
		}
		depth, e, err := s.Lookup(off, off+int64(len(p)))
		if err != nil {
			return err
		}
		n := e.Length
		switch e.Kind {
		case Data:
			if m, err := s[depth].ReadAt(p[:n], off); int64(m) != n {
				return readError(err, off)
			}
		default:
			clear(p[:n])
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

// Bounded is an Image that can stop an extent at a limit: reading a few
// bytes then costs no walk of the metadata far past them.
type Bounded interface {
	ExtentBefore(off, limit int64) (Extent, error)
}

// extentBefore is l's extent at off, cut at limit.
func extentBefore(l Image, off, limit int64) (Extent, error) {
	var e Extent
	var err error
	if b, ok := l.(Bounded); ok {
		e, err = b.ExtentBefore(off, limit)
	} else {
		e, err = l.Extent(off)
	}
	if err != nil {
		return Extent{}, err
	}
	if e.Start != off || e.End() <= off {
		return Extent{}, errcode.New(errcode.Internal, "extent at guest offset %d made no progress", off)
	}
	if e.End() > limit {
		e.Length = limit - off
	}
	return e, nil
}

// Lookup says what the chain defines at off (0 <= off < VirtualSize), for at
// most limit-off bytes: the depth of the image that answers, and its extent
// there, cut to the run in which no image above it changes. The image that
// answers is the first that is not Unallocated at off, or, when there is none,
// the one where reading stops: the last image, or one whose backing image
// ends at or before off. Its extent is then Unallocated and the bytes read as
// zero, as `qemu-img map` reports them.
func (s Stack) Lookup(off, limit int64) (int, Extent, error) {
	size := s.VirtualSize()
	if off < 0 || off >= size || limit <= off {
		return 0, Extent{}, errcode.New(errcode.Internal, "lookup of [%d, %d) outside the disk (%d bytes)", off, limit, size)
	}
	limit = min(limit, size)
	for i, l := range s {
		e, err := extentBefore(l, off, limit)
		if err != nil {
			return 0, Extent{}, err
		}
		if e.Kind != Unallocated || i == len(s)-1 || off >= s[i+1].VirtualSize() {
			return i, e, nil
		}
		limit = e.End()
	}
	panic("unreachable")
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
	return s.ExtentBefore(off, size)
}

// ExtentBefore is Extent cut at limit (off < limit). Past VirtualSize the
// chain reads as zero: the answer is one Zero run up to limit, so that two
// chains of different sizes can be walked side by side.
func (s Stack) ExtentBefore(off, limit int64) (Extent, error) {
	if off < 0 || limit <= off {
		return Extent{}, errcode.New(errcode.Internal, "extent of [%d, %d)", off, limit)
	}
	if off >= s.VirtualSize() {
		return Extent{Start: off, Length: limit - off, Kind: Zero, HostOffset: -1}, nil
	}
	_, e, err := s.Lookup(off, limit)
	if err != nil {
		return Extent{}, err
	}
	if e.Kind == Unallocated {
		e.Kind = Zero
	}
	e.HostOffset, e.Compressed = -1, false
	return e, nil
}

// Allocated reports whether some image of s defines the bytes at off, and
// for how many of them (at most limit-off) the answer holds: qemu's
// bdrv_is_allocated_above for the images of s. Past the end of an image of s
// the bytes count as defined by it (they read as zero whatever lies below);
// an empty Stack defines nothing.
func (s Stack) Allocated(off, limit int64) (bool, int64, error) {
	if off < 0 || limit <= off {
		return false, 0, errcode.New(errcode.Internal, "allocation of [%d, %d)", off, limit)
	}
	for _, l := range s {
		if off >= l.VirtualSize() {
			return true, limit - off, nil
		}
		e, err := extentBefore(l, off, limit)
		if err != nil {
			return false, 0, err
		}
		if e.Kind != Unallocated {
			return true, e.Length, nil
		}
		limit = e.End()
	}
	return false, limit - off, nil
}

// Piece is a run of guest bytes in which two chains each read one way by
// their metadata: OldZero and NewZero say whether the old and the new chain
// read as zero there without storing anything. Where both do, the chains
// cannot differ; elsewhere only their bytes can tell.
type Piece struct {
	Start, Length    int64
	OldZero, NewZero bool
}

// End is the first guest offset after the piece.
func (p Piece) End() int64 { return p.Start + p.Length }

// Compare splits [off, end) into the pieces in which neither old's nor new's
// block status changes, neighbours of the same status merged, appended to
// out[:0]. Either chain may be smaller than end, or empty: past its end it
// reads as zero.
func Compare(old, new Stack, off, end int64, out []Piece) ([]Piece, error) {
	out = out[:0]
	var o, n Extent // the current extent of each side, ahead of off
	for off < end {
		var err error
		if o.End() <= off {
			if o, err = old.ExtentBefore(off, end); err != nil {
				return nil, err
			}
		}
		if n.End() <= off {
			if n, err = new.ExtentBefore(off, end); err != nil {
				return nil, err
			}
		}
		next := min(o.End(), n.End())
		oz, nz := o.Kind == Zero, n.Kind == Zero
		if k := len(out) - 1; k >= 0 && out[k].OldZero == oz && out[k].NewZero == nz {
			out[k].Length += next - off
		} else {
			out = append(out, Piece{Start: off, Length: next - off, OldZero: oz, NewZero: nz})
		}
		off = next
	}
	return out, nil
}
