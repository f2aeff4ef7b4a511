package raw

import (
	"errors"
	"io"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
)

// SectorSize is the unit qemu rounds a raw image's size up to.
const SectorSize = 512

// HoleFinder reports, for a byte offset in the image file, whether it lies in
// data or in a hole and how long that run is (at most n bytes). It is what
// SEEK_DATA/SEEK_HOLE tell; the worker implements it on its file descriptors.
type HoleFinder interface {
	Status(off, n int64) (data bool, length int64, err error)
}

// Image is a raw image: guest offset == file offset. It is safe for concurrent
// use when its ReaderAt and HoleFinder are.
type Image struct {
	r        io.ReaderAt
	fileSize int64
	vsize    int64
	holes    HoleFinder
}

var _ layer.Image = (*Image)(nil)

// Open returns the raw image of a file of size bytes. Every byte of the file is
// Data at its own offset.
func Open(r io.ReaderAt, size int64) *Image { return OpenWithHoles(r, size, nil) }

// OpenWithHoles is Open with a HoleFinder: holes of the file are reported as
// Zero extents that keep their host offset, as qemu-img map reports them
// ("zero": true, "data": false, "offset": N).
func OpenWithHoles(r io.ReaderAt, size int64, holes HoleFinder) *Image {
	size = max(size, 0)
	vsize := size
	if rem := size % SectorSize; rem != 0 && size <= 1<<63-1-SectorSize {
		vsize += SectorSize - rem
	}
	return &Image{r: r, fileSize: size, vsize: vsize, holes: holes}
}

// VirtualSize is the file size rounded up to a whole sector, as qemu reports it.
func (img *Image) VirtualSize() int64 { return img.vsize }

// FileSize is the size of the file.
func (img *Image) FileSize() int64 { return img.fileSize }

// Extent returns the run starting at off: file data, or (with a HoleFinder) a
// hole. The bytes between the end of the file and VirtualSize are Zero, as a
// hole past the end of the file, and merge with a hole that reaches the end.
func (img *Image) Extent(off int64) (layer.Extent, error) {
	if off < 0 || off >= img.vsize {
		return layer.Extent{}, errcode.New(errcode.Internal, "raw extent offset %d outside the disk (%d bytes)", off, img.vsize)
	}
	zeroToEnd := layer.Extent{Start: off, Length: img.vsize - off, Kind: layer.Zero, HostOffset: off}
	if off >= img.fileSize {
		return zeroToEnd, nil
	}
	n := img.fileSize - off
	if img.holes == nil {
		return layer.Extent{Start: off, Length: n, Kind: layer.Data, HostOffset: off}, nil
	}
	data, l, err := img.holes.Status(off, n)
	if err != nil {
		return layer.Extent{}, err
	}
	if l <= 0 || l > n {
		l = n
	}
	if data {
		return layer.Extent{Start: off, Length: l, Kind: layer.Data, HostOffset: off}, nil
	}
	if l == n {
		return zeroToEnd, nil
	}
	return layer.Extent{Start: off, Length: l, Kind: layer.Zero, HostOffset: off}, nil
}

// ReadAt reads guest bytes: the file, then zeros up to VirtualSize.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errcode.New(errcode.Internal, "negative read offset %d", off)
	}
	if off >= img.vsize {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), img.vsize-off))
	inFile := 0
	if off < img.fileSize {
		inFile = int(min(int64(n), img.fileSize-off))
		got, err := img.r.ReadAt(p[:inFile], off)
		if got < inFile {
			if err == nil || errors.Is(err, io.EOF) {
				return got, errcode.New(errcode.ReadFailed, "raw image is shorter than %d bytes", img.fileSize)
			}
			return got, errcode.New(errcode.ReadFailed, "reading raw image at offset %d: %v", off, err)
		}
	}
	clear(p[inFile:n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
