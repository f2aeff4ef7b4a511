// Package layer is the worker's view of one image in a backing chain: which guest
// bytes the image itself defines, and their contents.
//
// The format packages (qcow2, vmdk, raw) implement Image; the worker stacks Images
// into a Stack to read a whole chain, compute block status (map) and find the
// ranges rebase and commit must copy. Nothing here does I/O of its own.
package layer

import "io"

// Kind says what an image defines for a run of guest bytes.
type Kind uint8

const (
	// Unallocated bytes are not defined by this image: they come from the backing
	// image, or read as zero when there is none.
	Unallocated Kind = iota
	// Zero bytes are defined by this image to read as zero (a qcow2 zero cluster, a
	// vmdk zeroed grain).
	Zero
	// Data bytes are stored in this image.
	Data
)

func (k Kind) String() string {
	switch k {
	case Zero:
		return "zero"
	case Data:
		return "data"
	}
	return "unallocated"
}

// Extent is a run of guest bytes [Start, Start+Length) that an image defines in one
// way. HostOffset is the byte offset in the image file where the run starts when the
// run has a place there: Data stored contiguously, a qcow2 zero cluster that keeps
// its host cluster, or an unallocated subcluster of an allocated extended-L2 cluster.
// It is -1 otherwise (unallocated, plain zero, compressed data).
type Extent struct {
	Start, Length int64
	Kind          Kind
	HostOffset    int64
	Compressed    bool
}

// End is the first guest offset after the extent.
func (e Extent) End() int64 { return e.Start + e.Length }

// Image is one image of a chain as the worker reads it.
//
// Extent returns the extent that starts at off (0 <= off < VirtualSize). Its length
// is at least one byte and ends at or before VirtualSize; implementations return
// whole (sub)clusters or grains and may merge neighbours of the same kind whose host
// offsets are contiguous.
//
// ReadAt reads guest bytes as this image alone defines them: unallocated and zero
// ranges read as zeros. Reads past VirtualSize return io.EOF.
type Image interface {
	io.ReaderAt
	VirtualSize() int64
	Extent(off int64) (Extent, error)
}
