package worker

import (
	"strconv"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
)

// A member is one image of a chain as the map walk sees it: its layer, and for
// the image's own file, where the file has holes.
type member struct {
	img   layer.Image
	raw   bool       // a raw image's extents are its file's data and holes
	holes holeFinder // nil: the file has no holes worth reporting
}

// holeFinder reports, for a host offset in an image file, whether it lies in
// data or a hole, and how far that run extends (capped at n). Past the end of
// the file it reports a hole.
type holeFinder interface {
	Status(off, n int64) (data bool, length int64, err error)
}

// blockChain is a chain as qemu's block status sees it: the images stacked,
// and each image's own file.
type blockChain struct {
	stack   layer.Stack
	members []member
}

func newBlockChain(members []member) blockChain {
	c := blockChain{stack: make(layer.Stack, len(members)), members: members}
	for i, m := range members {
		c.stack[i] = m.img
	}
	return c
}

// mapEntry is qemu-img map's get_block_status at off, for at most n bytes:
// the first image of the chain that says data or zero (qemu's
// bdrv_co_block_status with want_zero set). An unallocated range reads zero
// where the chain ends or its backing image does; a raw image reports its
// file's data and holes; data of a qcow2 image with preallocated metadata
// that sits in a hole of its file reads zero too.
func (c blockChain) mapEntry(off, n int64) (proto.MapEntry, error) {
	depth, e, err := c.stack.Lookup(off, off+n)
	if err != nil {
		return proto.MapEntry{}, err
	}
	me := proto.MapEntry{Start: off, Length: e.Length, Depth: depth}
	switch e.Kind {
	case layer.Data:
		me.Data, me.Present = true, true
	case layer.Zero:
		me.Zero, me.Present = true, true
	default:
		me.Zero = true
	}
	if e.HostOffset >= 0 {
		o := e.HostOffset
		me.Offset = &o
		if m := c.members[depth]; e.Kind == layer.Data && !m.raw && m.holes != nil {
			data, l, err := m.holes.Status(o, e.Length)
			if err != nil {
				return proto.MapEntry{}, err
			}
			me.Length = l
			me.Zero = !data
		}
	}
	return me, nil
}

// maxMapBytes bounds the JSON encoding of a map's rows, so that a map too
// large to send fails as soon as that is known.
const maxMapBytes = maxResultJSON

// chainMap returns the rows of `qemu-img map` for chain (top first): one entry
// per run of equal status, merged as qemu merges them. A map whose rows the
// host could not accept fails with IMAGE_TOO_LARGE as soon as it is known, one
// whose rows take more than maxBytes (when positive) of JSON with
// DOCUMENT_TOO_LARGE: a small hostile image can describe millions of rows.
//
// An image of virtual size 0 has no rows: the result is an empty list, never
// null, which the protocol would take for a missing result. It reports no
// progress: nothing shows a map's, and each line would cost a write.
func chainMap(chain []member, maxBytes int64) ([]proto.MapEntry, error) {
	limit, code, what := int64(maxMapBytes), errcode.ImageTooLarge, "more than a worker may answer"
	if maxBytes > 0 && maxBytes < limit {
		limit, code, what = maxBytes, errcode.DocumentTooLarge, "more than the "+strconv.FormatInt(maxBytes, 10)+" bytes asked for"
	}
	c := newBlockChain(chain)
	size := c.stack.VirtualSize()
	rows := []proto.MapEntry{}
	var encoded int64 // JSON bytes of the rows before the last one
	for off := int64(0); off < size; {
		e, err := c.mapEntry(off, size-off)
		if err != nil {
			return nil, err
		}
		if e.Length <= 0 {
			return nil, errInternal("block status made no progress at offset %d", off)
		}
		if k := len(rows) - 1; k >= 0 && mergeable(rows[k], e) {
			rows[k].Length += e.Length
		} else {
			if k >= 0 {
				if encoded += mapEntryJSONLen(rows[k]); encoded > limit {
					return nil, errcode.New(code, "the map of this image has more than %d rows (%d bytes) before offset %d of %d: %s",
						len(rows), encoded, off, size, what)
				}
			}
			rows = append(rows, e)
		}
		off += e.Length
	}
	return rows, nil
}

func mergeable(a, b proto.MapEntry) bool {
	if a.Depth != b.Depth || a.Present != b.Present || a.Zero != b.Zero || a.Data != b.Data {
		return false
	}
	if (a.Offset == nil) != (b.Offset == nil) {
		return false
	}
	return a.Offset == nil || *a.Offset+a.Length == *b.Offset
}

// mapEntryJSONLen is the length of e encoded by encoding/json, plus the comma
// that separates it from the next row.
func mapEntryJSONLen(e proto.MapEntry) int64 {
	var buf [24]byte
	digits := func(v int64) int { return len(strconv.AppendInt(buf[:0], v, 10)) }
	boolLen := func(b bool) int {
		if b {
			return len("true")
		}
		return len("false")
	}
	n := len(`{"start":,"length":,"depth":,"present":,"zero":,"data":},`) +
		digits(e.Start) + digits(e.Length) + digits(int64(e.Depth)) +
		boolLen(e.Present) + boolLen(e.Zero) + boolLen(e.Data)
	if e.Offset != nil {
		n += len(`,"offset":`) + digits(*e.Offset)
	}
	return int64(n)
}
