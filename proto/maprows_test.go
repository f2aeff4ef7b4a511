package proto

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
)

func off(v int64) *int64 { return &v }

func TestMapRowsRoundTrip(t *testing.T) {
	for name, rows := range map[string]MapRows{
		"empty":    {},
		"one hole": {{Start: 0, Length: 1 << 30, Zero: true}},
		"chain": {
			{Start: 0, Length: 65536, Depth: 1, Present: true, Data: true, Offset: off(327680)},
			{Start: 65536, Length: 983040, Depth: 1, Zero: true},
			{Start: 1048576, Length: 65536, Depth: 1, Present: true, Zero: true, Offset: off(0)},
			{Start: 1114112, Length: 3080192, Depth: 300, Present: true, Data: true},
		},
		"largest": {{Start: 0, Length: math.MaxInt64, Depth: math.MaxInt32, Present: true, Zero: true, Data: true, Offset: off(math.MaxInt64)}},
	} {
		t.Run(name, func(t *testing.T) {
			doc, err := json.Marshal(rows)
			if err != nil {
				t.Fatal(err)
			}
			var back MapRows
			if err := json.Unmarshal(doc, &back); err != nil {
				t.Fatalf("%s: %v", doc, err)
			}
			if !reflect.DeepEqual(back, rows) {
				t.Fatalf("round trip of %s:\n got %+v\nwant %+v", doc, back, rows)
			}
			// The point of the form: far shorter than the rows as objects.
			if plain, _ := json.Marshal([]MapEntry(rows)); len(rows) > 1 && len(doc)*4 > len(plain) {
				t.Errorf("%d bytes, as objects %d", len(doc), len(plain))
			}
		})
	}
}

// TestMapRowsEncodeRefuses checks that a worker cannot send rows the form
// cannot say: the encoder refuses rather than send something else.
func TestMapRowsEncodeRefuses(t *testing.T) {
	for name, rows := range map[string]MapRows{
		"first row not at 0": {{Start: 512, Length: 512}},
		"gap":                {{Start: 0, Length: 512}, {Start: 1024, Length: 512}},
		"overlap":            {{Start: 0, Length: 512}, {Start: 256, Length: 512}},
		"negative length":    {{Start: 0, Length: -1}},
		"negative depth":     {{Start: 0, Length: 1, Depth: -1}},
		"negative offset":    {{Start: 0, Length: 1, Offset: off(-7)}},
		"past 2^63":          {{Start: 0, Length: math.MaxInt64}, {Start: math.MaxInt64, Length: 1}},
	} {
		if doc, err := json.Marshal(rows); err == nil {
			t.Errorf("%s: encoded as %s", name, doc)
		}
	}
}

func TestMapRowsDecodeRefuses(t *testing.T) {
	str := func(raw ...byte) string { return `"` + base64.StdEncoding.EncodeToString(raw) + `"` }
	maxVarint := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f} // math.MaxInt64
	for name, doc := range map[string]string{
		"rows as objects":       `[{"start":0,"length":512,"depth":0,"present":true,"zero":false,"data":true}]`,
		"null":                  `null`,
		"number":                `12`,
		"escape":                `"AAEB\u0041"`,
		"newline escape":        `"AAEB\nAA=="`,
		"not base64":            `"!!!!"`,
		"unpadded":              `"AAE"`,
		"non-zero pad bits":     `"AAF="`,
		"unknown flag":          str(0x10, 0, 1),
		"truncated row":         str(0x01, 0),
		"truncated offset":      str(0x09, 0, 1),
		"truncated varint":      str(0x01, 0x80),
		"non-minimal depth":     str(0x01, 0x80, 0x00, 1),
		"non-minimal length":    str(0x01, 0, 0x81, 0x00),
		"depth past int32":      str(append([]byte{0x01}, append(maxVarint, 1)...)...),
		"varint past 64 bits":   str(0x01, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f),
		"length past 2^63":      str(0x01, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
		"rows ending past 2^63": str(append(append([]byte{0x01, 0}, maxVarint...), 0x01, 0, 1)...),
		"offset past 2^63":      str(0x09, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
	} {
		var rows MapRows
		if err := json.Unmarshal([]byte(doc), &rows); err == nil {
			t.Errorf("%s: %s decoded as %+v", name, doc, rows)
		} else if !strings.Contains(err.Error(), "map rows") && !strings.Contains(err.Error(), "map row") {
			t.Errorf("%s: error %q does not say what failed", name, err)
		}
	}
}

// TestMapRowsBounded checks that a worker cannot make the host hold more rows
// than JSON's bound allowed: the shortest rows, one past MaxMapRows.
func TestMapRowsBounded(t *testing.T) {
	row := []byte{rowZero, 0, 1} // one byte of zeros at depth 0
	raw := bytes.Repeat(row, MaxMapRows)
	rows, err := DecodeMapRows(raw)
	if err != nil || len(rows) != MaxMapRows {
		t.Fatalf("%d rows, error %v; want %d", len(rows), err, MaxMapRows)
	}
	if _, err := rows.AppendBinary(nil); err != nil {
		t.Errorf("encoding %d rows: %v", MaxMapRows, err)
	}
	if rows, err := DecodeMapRows(append(raw, row...)); err == nil {
		t.Errorf("decoded %d rows, more than %d", len(rows), MaxMapRows)
	}
	if _, err := append(rows, MapEntry{Start: int64(MaxMapRows), Length: 1}).AppendBinary(nil); err == nil {
		t.Errorf("encoded %d rows", MaxMapRows+1)
	}
}
