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
	raw   bool       // raw images report the host file's own data/hole status
	holes holeFinder // nil: the file has no holes worth reporting
}

// holeFinder reports, for a host offset in an image file, whether it lies in
// data or a hole, and how far that run extends (capped at n). Past the end of
// the file it reports a hole.
type holeFinder interface {
	Status(off, n int64) (data bool, length int64, err error)
}

// status is qemu's block-status result for one layer: BDRV_BLOCK_DATA, _ZERO,
// _ALLOCATED and _OFFSET_VALID.
type status struct {
	data, zero, allocated bool
	hasOffset             bool
	offset                int64
	length                int64
}

// layerStatus is the block status of chain[i] alone at off, for at most n bytes,
// the way qemu's bdrv_co_block_status computes it with want_zero set: an
// unallocated range reads zero when the layer has no backing or lies past the
// backing's end; data that sits in a hole of the image file reads zero too.
func layerStatus(chain []member, i int, off, n int64) (status, error) {
	m := chain[i]
	if size := m.img.VirtualSize(); off+n > size {
		n = size - off
	}
	if m.raw {
		return fileStatus(m, status{allocated: true, hasOffset: true, offset: off}, n)
	}
	e, err := m.img.Extent(off)
	if err != nil {
		return status{}, err
	}
	st := status{length: min(n, e.End()-off)}
	if e.HostOffset >= 0 {
		st.hasOffset = true
		st.offset = e.HostOffset + (off - e.Start)
	}
	switch e.Kind {
	case layer.Data:
		st.data, st.allocated = true, true
		if st.hasOffset {
			return fileStatus(m, st, st.length)
		}
	case layer.Zero:
		st.zero, st.allocated = true, true
	case layer.Unallocated:
		if i == len(chain)-1 || off >= chain[i+1].img.VirtualSize() {
			st.zero = true
		}
	}
	return st, nil
}

// fileStatus refines st with the status of the host file at st.offset: a hole
// reads as zero, and the run ends where the file's data/hole run ends.
func fileStatus(m member, st status, n int64) (status, error) {
	st.length = n
	if m.holes == nil {
		st.data = true
		return st, nil
	}
	data, l, err := m.holes.Status(st.offset, n)
	if err != nil {
		return status{}, err
	}
	st.length = l
	if m.raw {
		st.data, st.zero = data, !data
	} else if !data {
		st.zero = true
	}
	return st, nil
}

// mapEntry is qemu-img map's get_block_status: walk down the chain until a layer
// says data or zero.
func mapEntry(chain []member, off, n int64) (proto.MapEntry, error) {
	for depth := range chain {
		st, err := layerStatus(chain, depth, off, n)
		if err != nil {
			return proto.MapEntry{}, err
		}
		n = st.length
		if st.data || st.zero || depth == len(chain)-1 {
			e := proto.MapEntry{Start: off, Length: n, Depth: depth, Present: st.allocated, Zero: st.zero, Data: st.data}
			if st.hasOffset {
				o := st.offset
				e.Offset = &o
			}
			return e, nil
		}
	}
	panic("unreachable: empty chain")
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
// null, which the protocol would take for a missing result.
func chainMap(chain []member, maxBytes int64, progress func(float64)) ([]proto.MapEntry, error) {
	limit, code, what := int64(maxMapBytes), errcode.ImageTooLarge, "more than a worker may answer"
	if maxBytes > 0 && maxBytes < limit {
		limit, code, what = maxBytes, errcode.DocumentTooLarge, "more than the "+strconv.FormatInt(maxBytes, 10)+" bytes asked for"
	}
	size := chain[0].img.VirtualSize()
	rows := []proto.MapEntry{}
	var encoded int64 // JSON bytes of the rows before the last one
	for off := int64(0); off < size; {
		e, err := mapEntry(chain, off, size-off)
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
		if progress != nil {
			progress(float64(off) / float64(size))
		}
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
