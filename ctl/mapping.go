package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"instarfs/chainmodel"
	"instarfs/ctl/mapsvg"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// MapResult is the allocation map of an image through its backing chain.
type MapResult struct {
	Entries []proto.MapEntry
	// Names are the images' names by depth, for the human form.
	Names []string
	// Format and VirtualSize describe the top image, for the picture.
	Format      string
	VirtualSize int64
}

// Map opens path's chain (without locks with forceShare, as -U) and asks a
// worker for its map.
func Map(ctx context.Context, o *Opener, path, format string, forceShare bool) (*MapResult, error) {
	c, res, err := o.runChain(ctx, path, chainJob{
		op:   proto.OpMap,
		args: proto.MapArgs{},
		opts: OpenOptions{Format: format, ForceShare: forceShare},
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return decodeMap(c, res)
}

// MapChain asks a worker for the map of an open chain. maxBytes, when
// positive, bounds the map's rows as the worker encodes them (compact JSON,
// shorter than what JSON renders): a larger map fails with DOCUMENT_TOO_LARGE
// without being made whole or sent.
func MapChain(ctx context.Context, sb vmm.Sandbox, c *chainmodel.Chain, maxBytes int64) (*MapResult, error) {
	args, _ := json.Marshal(proto.MapArgs{MaxBytes: maxBytes})
	res, err := sb.Run(ctx, vmm.Job{
		Request: proto.Request{Op: proto.OpMap, Images: c.Refs(), Args: args},
		Files:   c.Files(),
	})
	if err != nil {
		return nil, err
	}
	return decodeMap(c, res)
}

// decodeMap decodes and checks a worker's map of c.
func decodeMap(c *chainmodel.Chain, res json.RawMessage) (*MapResult, error) {
	// The rows are one JSON string of base64, which UnmarshalJSON decodes
	// strictly by itself: spared encoding/json's two scans of it.
	var rows proto.MapRows
	if err := rows.UnmarshalJSON(res); err != nil {
		return nil, errcode.New(errcode.WorkerProtocol, "decoding worker result: %v", err)
	}
	return mapOf(c, rows)
}

// mapOf checks a worker's map rows of c.
func mapOf(c *chainmodel.Chain, rows []proto.MapEntry) (*MapResult, error) {
	m := &MapResult{Entries: rows, Format: c.Top().Info.Format, VirtualSize: c.Top().Info.VirtualSize}
	for _, im := range c.Images {
		m.Names = append(m.Names, im.Name)
	}
	if err := m.validate(c.Top().Info.VirtualSize); err != nil {
		return nil, err
	}
	return m, nil
}

// validate checks that the worker's rows tile [0, size) and name real layers.
func (m *MapResult) validate(size int64) error {
	var next int64
	for _, e := range m.Entries {
		if e.Start != next || e.Length <= 0 || e.Length > size-next || e.Depth < 0 || e.Depth >= len(m.Names) ||
			e.Offset != nil && *e.Offset < 0 {
			return errcode.New(errcode.WorkerProtocol, "worker returned an invalid map row at offset %d", e.Start)
		}
		next += e.Length
	}
	if next != size {
		return errcode.New(errcode.WorkerProtocol, "worker's map covers %d bytes of %d", next, size)
	}
	return nil
}

// emptyMapRow is the row qemu-img map prints for an image of size 0: the
// zero-length entry it starts from and never extends.
var emptyMapRow = []proto.MapEntry{{}}

// Window keeps the part of the map in [start, start+maxLen) (maxLen < 0: to
// the end), as qemu-img map --start-offset/--max-length print it: rows cut at
// both ends, host offsets moved with their start. An empty window is the one
// row qemu-img prints then: start, length 0, nothing present.
func (m *MapResult) Window(start, maxLen int64) {
	var size int64
	if n := len(m.Entries); n > 0 {
		size = m.Entries[n-1].Start + m.Entries[n-1].Length
	}
	end := size
	if maxLen >= 0 && maxLen < size-start {
		end = start + maxLen
	}
	var out []proto.MapEntry
	for _, e := range m.Entries {
		lo, hi := max(e.Start, start), min(e.Start+e.Length, end)
		if lo >= hi {
			continue
		}
		if e.Offset != nil {
			off := *e.Offset + lo - e.Start
			e.Offset = &off
		}
		e.Start, e.Length = lo, hi-lo
		out = append(out, e)
	}
	if out == nil {
		out = []proto.MapEntry{{Start: start}}
	}
	m.Entries = out
}

// JSON renders the map exactly as `qemu-img map --output=json` does.
func (m *MapResult) JSON() []byte {
	entries := m.Entries
	if len(entries) == 0 {
		entries = emptyMapRow
	}
	// Appended by hand, not with fmt: the reference set's map has 12,000
	// rows, and formatting them was most of the host's time.
	b := make([]byte, 0, len(entries)*128)
	b = append(b, '[')
	for i, e := range entries {
		if i > 0 {
			b = append(b, ",\n"...)
		}
		b = append(b, `{ "start": `...)
		b = strconv.AppendInt(b, e.Start, 10)
		b = append(b, `, "length": `...)
		b = strconv.AppendInt(b, e.Length, 10)
		b = append(b, `, "depth": `...)
		b = strconv.AppendInt(b, int64(e.Depth), 10)
		b = append(b, `, "present": `...)
		b = strconv.AppendBool(b, e.Present)
		b = append(b, `, "zero": `...)
		b = strconv.AppendBool(b, e.Zero)
		b = append(b, `, "data": `...)
		b = strconv.AppendBool(b, e.Data)
		if e.Offset != nil {
			b = append(b, `, "offset": `...)
			b = strconv.AppendInt(b, *e.Offset, 10)
		}
		b = append(b, '}')
	}
	return append(b, "]\n"...)
}

// SVG draws the map as a picture (see package mapsvg).
func (m *MapResult) SVG() []byte {
	return mapsvg.Render(mapsvg.Input{Image: m.Names[0], Format: m.Format, VirtualSize: m.VirtualSize, Members: m.Names, Entries: m.Entries})
}

// Human renders the map as `qemu-img map` does: the data ranges and where they
// are mapped. Like qemu-img, it fails when data has no host offset (compressed
// clusters).
func (m *MapResult) Human() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	for _, e := range m.Entries {
		if e.Data && e.Offset == nil {
			return nil, errcode.New(errcode.BadArguments, "File contains external, encrypted or compressed clusters.")
		}
		if e.Data && !e.Zero {
			fmt.Fprintf(&b, "%-16s%-16s%-16s%s\n", hexC(e.Start), hexC(e.Length), hexC(*e.Offset), m.Names[e.Depth])
		}
	}
	return b.Bytes(), nil
}

// hexC formats like C's "%#x": 0 has no prefix.
func hexC(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}
