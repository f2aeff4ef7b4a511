package proto

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// MapRows are a map's rows as they cross the boundary (OpMap's result,
// SurveyResult.Map). In JSON they are one string: the base64 of the rows in
// a compact binary form, about a tenth of the rows as JSON objects, so that
// neither side spends its time writing and scanning field names. A row is
//
//	flags   one byte: 1 present, 2 zero, 4 data, 8 an offset follows; no other bit
//	depth   uvarint
//	length  uvarint, at most math.MaxInt64
//	offset  uvarint, at most math.MaxInt64, when flags has 8
//
// and its start is where the row before it ended (the first starts at 0): the
// rows tile the range they describe, so a start is never sent. Decoding is
// strict: a varint longer than it needs to be, a row that ends past
// math.MaxInt64, an unknown flag or a truncated row is an error. Whether the
// rows tile the image and name its layers is the host's check, as before.
type MapRows []MapEntry

// Flags of a row in the compact form.
const (
	rowPresent = 1 << iota
	rowZero
	rowData
	rowOffset
	rowFlags = rowPresent | rowZero | rowData | rowOffset
)

// maxRowBytes is the longest encoding of one row: the flags and three
// varints of at most 10 bytes.
const maxRowBytes = 1 + 3*binary.MaxVarintLen64

// MaxMapRows bounds the rows a map may have. A worker keeps its rows' JSON
// within what the host reads of a result (proto.MaxResultBytes), and a row
// takes more than 64 bytes as a JSON object; in the compact form it may take
// 3, so without this bound a worker could make the host hold 20 times as
// many rows as before.
const MaxMapRows = MaxResultBytes / 64

// AppendBinary appends the compact form of r to b. It fails for rows that do
// not tile from 0 or hold a negative number.
func (r MapRows) AppendBinary(b []byte) ([]byte, error) {
	if len(r) > MaxMapRows {
		return nil, fmt.Errorf("%d map rows, more than %d", len(r), MaxMapRows)
	}
	var next int64
	for i, e := range r {
		if e.Start != next || e.Length < 0 || e.Depth < 0 || e.Offset != nil && *e.Offset < 0 || e.Length > math.MaxInt64-next {
			return nil, fmt.Errorf("map row %d (start %d, length %d, depth %d) does not follow the row before it", i, e.Start, e.Length, e.Depth)
		}
		next += e.Length
		var flags byte
		if e.Present {
			flags |= rowPresent
		}
		if e.Zero {
			flags |= rowZero
		}
		if e.Data {
			flags |= rowData
		}
		if e.Offset != nil {
			flags |= rowOffset
		}
		b = append(b, flags)
		b = binary.AppendUvarint(b, uint64(e.Depth))
		b = binary.AppendUvarint(b, uint64(e.Length))
		if e.Offset != nil {
			b = binary.AppendUvarint(b, uint64(*e.Offset))
		}
	}
	return b, nil
}

// DecodeMapRows decodes the compact form of rows, at most MaxMapRows.
func DecodeMapRows(b []byte) (MapRows, error) {
	rows := make(MapRows, 0, min(len(b)/8, MaxMapRows))
	var next int64
	for len(b) > 0 {
		at := next
		if len(rows) == MaxMapRows {
			return nil, fmt.Errorf("map rows: more than %d", MaxMapRows)
		}
		flags := b[0]
		b = b[1:]
		if flags&^rowFlags != 0 {
			return nil, fmt.Errorf("map row at offset %d: unknown flags %#x", at, flags)
		}
		depth, err := uvarint(&b, math.MaxInt32)
		if err != nil {
			return nil, fmt.Errorf("map row at offset %d: depth: %w", at, err)
		}
		length, err := uvarint(&b, uint64(math.MaxInt64-next))
		if err != nil {
			return nil, fmt.Errorf("map row at offset %d: length: %w", at, err)
		}
		e := MapEntry{Start: next, Length: int64(length), Depth: int(depth),
			Present: flags&rowPresent != 0, Zero: flags&rowZero != 0, Data: flags&rowData != 0}
		if flags&rowOffset != 0 {
			off, err := uvarint(&b, math.MaxInt64)
			if err != nil {
				return nil, fmt.Errorf("map row at offset %d: host offset: %w", at, err)
			}
			o := int64(off)
			e.Offset = &o
		}
		next += e.Length
		rows = append(rows, e)
	}
	return rows, nil
}

// uvarint takes one minimally encoded uvarint of at most max off the front
// of *b.
func uvarint(b *[]byte, max uint64) (uint64, error) {
	v, n := binary.Uvarint(*b)
	switch {
	case n == 0:
		return 0, errors.New("truncated")
	case n < 0:
		return 0, errors.New("overflows 64 bits")
	case n > 1 && (*b)[n-1] == 0:
		return 0, errors.New("not minimally encoded")
	case v > max:
		return 0, fmt.Errorf("%d is more than %d", v, max)
	}
	*b = (*b)[n:]
	return v, nil
}

// MarshalJSON encodes r as the JSON string of its compact form's base64.
func (r MapRows) MarshalJSON() ([]byte, error) {
	raw, err := r.AppendBinary(make([]byte, 0, len(r)*maxRowBytes))
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, base64.StdEncoding.EncodedLen(len(raw))+2)
	out = append(out, '"')
	out = base64.StdEncoding.AppendEncode(out, raw)
	return append(out, '"'), nil
}

// UnmarshalJSON decodes what MarshalJSON encodes, strictly: a JSON string of
// canonical, padded base64 and nothing else (not null, no escapes).
func (r *MapRows) UnmarshalJSON(data []byte) error {
	if len(data) < 2 || data[0] != '"' || data[len(data)-1] != '"' {
		return errors.New("map rows are not a JSON string")
	}
	text := data[1 : len(data)-1]
	raw, err := base64.StdEncoding.Strict().AppendDecode(make([]byte, 0, base64.StdEncoding.DecodedLen(len(text))), text)
	if err != nil {
		return fmt.Errorf("map rows: %w", err)
	}
	rows, err := DecodeMapRows(raw)
	if err != nil {
		return err
	}
	*r = rows
	return nil
}

var (
	_ json.Marshaler   = MapRows(nil)
	_ json.Unmarshaler = (*MapRows)(nil)
)
