package main

import (
	"bytes"
	"testing"
)

func TestLZ4Block(t *testing.T) {
	for _, tc := range []struct {
		name  string
		block []byte
		want  string
	}{
		{"literals", []byte{0x30, 'a', 'b', 'c'}, "abc"},
		// "abc", then 9 bytes from 3 back (overlapping), then "x".
		{"overlapping match", []byte{0x35, 'a', 'b', 'c', 3, 0, 0x10, 'x'}, "abcabcabcabcx"},
		// A literal length of 15 + 2 and a match length of 4 + 15 + 1.
		{"long lengths", append(append([]byte{0xff, 2}, bytes.Repeat([]byte{'z'}, 17)...), 1, 0, 1, 0x10, '!'), "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz!"},
	} {
		got, err := lz4Block(nil, tc.block, 1<<20)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	for _, bad := range [][]byte{
		{0x50, 'a'},       // literals past the block
		{0x10, 'a', 2, 0}, // a match further back than the output
		{0x10, 'a', 0, 0}, // offset 0
		{0x1f, 'a', 1, 0}, // a match length byte missing
		{0x10, 'a', 1},    // half an offset
	} {
		if got, err := lz4Block(nil, bad, 1<<20); err == nil {
			t.Errorf("%x decoded to %q", bad, got)
		}
	}
	if _, err := lz4Block(nil, []byte{0x35, 'a', 'b', 'c', 3, 0}, 8); err == nil {
		t.Error("the output grew past its limit")
	}
}
