// Package layer is the worker's view of the images of a backing chain, and
// the shape their writers share.
//
//   - Image is one image as its format reads it: which guest bytes it defines
//     itself (Extent: data, zero or unallocated) and their contents. The
//     format packages (qcow2, vmdk, raw) implement it.
//   - Stack is a whole chain, top first, flattened: ReadAt and Fill read what
//     the guest sees, Lookup says which image answers at an offset (the walk
//     of qemu-img map), Extent the flattened data/zero runs (the disk view),
//     Allocated whether the images of a part of the chain define a range
//     (commit, rebase within the chain), and Compare where two chains read as
//     zero by their metadata (rebase).
//   - Writer is what the qcow2 and vmdk writers have in common: guest data,
//     zeroes, flush and finish, in guest offsets.
//
// Nothing here does I/O of its own.
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

// ZeroFlags modify Writer.WriteZeroes.
type ZeroFlags uint8

const (
	// MayUnmap lets WriteZeroes free the space of what it zeroes, where the
	// format can (qemu's BDRV_REQ_MAY_UNMAP).
	MayUnmap ZeroFlags = 1 << iota
)

// Writer changes one image in place, in guest offsets. Which offsets and
// lengths it accepts (whole clusters, grains) is its format's rule.
type Writer interface {
	// WriteData writes p at guest offset off.
	WriteData(off int64, p []byte) error
	// WriteZeroes makes [off, off+n) read as zero.
	WriteZeroes(off, n int64, flags ZeroFlags) error
	// Flush makes everything written so far durable and referenced.
	Flush() error
	// Finish flushes and completes what the format writes last (a qcow2
	// header).
	Finish() error
}
