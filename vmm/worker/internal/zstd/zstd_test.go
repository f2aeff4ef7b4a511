package zstd

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// sample returns n bytes of a kind of content, the same for the same
// arguments: text from a small vocabulary (Huffman-coded literals, matches
// at many offsets), text with random bytes and runs in it, random bytes
// (raw blocks), random letters of a small alphabet (literals only), or
// three-byte tokens (many short sequences).
func sample(kind string, n int) []byte {
	words := []string{"qcow2 ", "cluster ", "the ", "backing ", "file ", "of ", "an ", "overlay ", "refcount ",
		"table\n", "L2 ", "entry, ", "zstd ", "frame ", "and ", "a ", "guest ", "sees ", "zeros. "}
	x := uint64(len(kind))*0x9e3779b97f4a7c15 + uint64(n)
	next := func() uint64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
	b := make([]byte, 0, n+16)
	for len(b) < n {
		switch r := next() % 100; {
		case kind == "skewed": // few symbols, no repeats: literals only
			b = append(b, "etaoinsrhldcumfp"[next()%16])
		case kind == "tokens": // short matches one after the other
			b = append(b, (words[next()%uint64(len(words))] + "..")[:3]...)
		case kind == "random":
			b = append(b, byte(next()))
		case kind == "mixed" && r < 10:
			for range next() % 64 {
				b = append(b, byte(next()))
			}
		case kind == "mixed" && r < 14:
			b = append(b, bytes.Repeat([]byte{byte(next())}, int(next()%3000))...)
		default:
			b = append(b, words[next()%uint64(len(words))]...)
		}
	}
	return b[:n]
}

// decode decodes the one frame in frame into a buffer of size bytes.
func decode(t *testing.T, frame []byte, size int) ([]byte, error) {
	t.Helper()
	var d Decoder
	dst := make([]byte, size)
	n, used, err := d.Decode(dst, frame)
	if err == nil && used != len(frame) {
		t.Fatalf("the frame takes %d of its %d bytes", used, len(frame))
	}
	return dst[:n], err
}

// TestDecodeFramesOfAnEncoder decodes what another implementation's encoder
// writes at each of its levels, for contents and sizes that make it use
// every block type, literal and sequence mode.
func TestDecodeFramesOfAnEncoder(t *testing.T) {
	levels := []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression, zstd.SpeedBestCompression}
	for _, kind := range []string{"text", "mixed", "random", "zeros", "skewed", "tokens"} {
		for _, n := range []int{0, 1, 7, 100, 700, 4 << 10, 64 << 10, 200 << 10, 2 << 20} {
			in := sample(kind, n)
			if kind == "zeros" {
				in = make([]byte, n)
			}
			for _, level := range levels {
				for _, opt := range []struct {
					name string
					opts []zstd.EOption
				}{
					{"", nil},
					{"single segment, no checksum", []zstd.EOption{zstd.WithSingleSegment(true), zstd.WithEncoderCRC(false)}},
					{"small window", []zstd.EOption{zstd.WithWindowSize(1 << 12), zstd.WithSingleSegment(false)}},
				} {
					name := fmt.Sprintf("%s/%d/%s/%s", kind, n, level, opt.name)
					enc, err := zstd.NewWriter(nil, append([]zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1)}, opt.opts...)...)
					if err != nil {
						t.Fatal(err)
					}
					frame := enc.EncodeAll(in, nil)
					got, err := decode(t, frame, n)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					if !bytes.Equal(got, in) {
						t.Fatalf("%s: decoded %d bytes that differ from the %d encoded", name, len(got), len(in))
					}
					if n > 0 {
						if _, err := decode(t, frame, n-1); !errors.Is(err, ErrTooLong) {
							t.Fatalf("%s: into one byte less: %v, want ErrTooLong", name, err)
						}
					}
				}
			}
		}
	}
}

var update = flag.Bool("update", false, "rewrite testdata/*.zst with the zstd command")

// cliFrames are frames the reference implementation's command wrote
// (testdata/NAME.zst, from sample(kind, size); -update writes them again).
var cliFrames = []struct {
	name, kind string
	size       int
	args       []string
}{
	{"text-1", "text", 300 << 10, []string{"-1"}},
	{"text-19", "text", 300 << 10, []string{"-19"}},
	{"mixed-3", "mixed", 300 << 10, []string{"-3"}},
	{"mixed-ultra22", "mixed", 300 << 10, []string{"--ultra", "-22"}},
	{"mixed-fast5-nocheck", "mixed", 100 << 10, []string{"--fast=5", "--no-check"}},
	{"text-long", "text", 200 << 10, []string{"--long=20", "-9"}},
	{"random-3", "random", 2 << 10, []string{"-3"}},
	{"mixed-64k-6", "mixed", 64 << 10, []string{"-6", "--no-content-size"}},
	{"text-small-19", "text", 600, []string{"-19"}},
	{"text-2k-1", "text", 2 << 10, []string{"-1"}},
	{"skewed-9", "skewed", 100 << 10, []string{"-9"}},
	{"tokens-19", "tokens", 300 << 10, []string{"-19"}},
	{"tokens-1", "tokens", 300 << 10, []string{"-1"}},
}

// TestDecodeFramesOfTheReference decodes frames of the zstd command, the
// implementation qemu links.
func TestDecodeFramesOfTheReference(t *testing.T) {
	for _, c := range cliFrames {
		t.Run(c.name, func(t *testing.T) {
			in := sample(c.kind, c.size)
			path := filepath.Join("testdata", c.name+".zst")
			if *update {
				cmd := exec.Command("zstd", append([]string{"-q", "-c"}, c.args...)...)
				cmd.Stdin = bytes.NewReader(in)
				out, err := cmd.Output()
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			frame, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decode(t, frame, c.size)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, in) {
				t.Fatalf("decoded %d bytes that differ from the %d compressed", len(got), len(in))
			}
		})
	}
}

// TestDecodeCraftedFrames decodes frames built by hand for what the
// encoders above do not write; the zstd command decodes them the same.
func TestDecodeCraftedFrames(t *testing.T) {
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tt := range []struct {
		name, frame, want string
	}{
		{"RLE literals, no sequences", "28b52ffd20141d0000a17800", strings.Repeat("x", 20)},
		{"Huffman weights stored directly", "28b52ffd2004bd010042c00ce1" + strings.Repeat("00", 48) + "011600", "abba"},
		{"a window of 2^27 + 2^25 in a frame that says its size", "28b52ffd848a0a000000510000726566636f756e7420676d5e1804", "refcount g"},
		{"no sequences, counted in two bytes, with the modes byte", "28b52ffd0028250000008000" + "00", ""},
	} {
		got, err := decode(t, unhex(tt.frame), 64)
		if err != nil || string(got) != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

// TestDecodeBlockLimit: in a frame that does not say its size, no block
// may decode to more than the window (libzstd decodes such a frame through
// a buffer of the window's size, as qemu calls it); in one that says its
// size, a block may. The zstd command (libzstd 1.5.4) decodes these frames
// the same.
func TestDecodeBlockLimit(t *testing.T) {
	// block is a block header of the given type and decoded size, and its
	// content: size bytes for a raw block, one for an RLE block.
	block := func(last bool, typ, size int) []byte {
		bh := typ<<1 | size<<3
		if last {
			bh |= 1
		}
		b := []byte{byte(bh), byte(bh >> 8), byte(bh >> 16)}
		if typ == 1 {
			return append(b, 'r')
		}
		return append(b, bytes.Repeat([]byte{'w'}, size)...)
	}
	frame := func(sized bool, blocks ...[]byte) []byte {
		f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00} // a 1 KiB window
		if sized {
			total := 0
			for _, b := range blocks {
				if b[0]>>1&3 == 1 {
					total += int(b[0])>>3 | int(b[1])<<5 | int(b[2])<<13
				} else {
					total += len(b) - 3
				}
			}
			f[4] = 0x40 // two bytes of size, less 256
			f = append(f, byte(total-256), byte((total-256)>>8))
		}
		for _, b := range blocks {
			f = append(f, b...)
		}
		return f
	}
	for _, tt := range []struct {
		name  string
		frame []byte
		want  int // -1: refused
	}{
		{"raw block of the window", frame(false, block(true, 0, 1024)), 1024},
		{"raw block past the window", frame(false, block(true, 0, 2000)), -1},
		{"RLE block past the window, after another", frame(false, block(false, 0, 1024), block(true, 1, 1025)), -1},
		{"RLE block far past the window (found by fuzzing)", frame(false, block(true, 1, 24672)), -1},
		{"raw block past the window, size said", frame(true, block(true, 0, 2000)), 2000},
		{"RLE block far past the window, size said", frame(true, block(true, 1, 24672)), 24672},
	} {
		got, err := decode(t, tt.frame, 32<<10)
		if tt.want < 0 && err == nil || tt.want >= 0 && (err != nil || len(got) != tt.want) {
			t.Errorf("%s: %d bytes, %v; want %d (-1: refused)", tt.name, len(got), err, tt.want)
		}
	}
}

// TestSequenceCount reads the three encodings of a block's number of
// sequences.
func TestSequenceCount(t *testing.T) {
	for _, tt := range []struct {
		head []byte
		want int
	}{
		{[]byte{0x7f}, 0x7f},
		{[]byte{0x85, 0x10}, 5<<8 + 0x10},
		{[]byte{0xfe, 0xff}, 0x7eff},
		{[]byte{0xff, 0x01, 0x02}, 0x7f00 + 0x201},
	} {
		var d Decoder
		s, err := d.sequenceHeader(append(bytes.Clone(tt.head), 0, 1))
		if err != nil || s.count != tt.want || len(s.stream) != 1 {
			t.Errorf("% x: %d sequences, %d bytes of stream, %v; want %d and 1", tt.head, s.count, len(s.stream), err, tt.want)
		}
	}
}

// TestDecodeRefusals: a frame cut short anywhere, with a byte changed, or
// decoded into too small a buffer is refused, never read past.
func TestDecodeRefusals(t *testing.T) {
	frame, err := os.ReadFile(filepath.Join("testdata", "mixed-3.zst"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 300 << 10
	for n := range len(frame) {
		if _, err := decode(t, frame[:n], size); err == nil {
			t.Fatalf("a frame cut to %d of its %d bytes decoded", n, len(frame))
		}
	}
	// The content checksum catches a changed literal or offset somewhere;
	// changed bytes elsewhere fail the structure.
	for i := 4; i < len(frame); i += 97 {
		bad := bytes.Clone(frame)
		bad[i] ^= 0x10
		if got, err := decode(t, bad, size); err == nil && !bytes.Equal(got, sample("mixed", size)) {
			t.Errorf("byte %d changed: decoded other content without an error", i)
		}
	}
	for _, tt := range []struct {
		name  string
		frame []byte
	}{
		{"reserved bit", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x08, 0, 1, 0, 0}},
		{"dictionary", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x21, 1, 0, 1, 0, 0}},
		{"window too large", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 18 << 3, 1, 0, 0}},
		{"window past 2^27 by its mantissa, size unsaid", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 17<<3 | 1, 1, 0, 0}},
		{"reserved block type", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 0, 7, 0, 0}},
		{"content size mismatch", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 2, 9, 0, 0, 'a'}},
		{"not a frame", []byte("not a zstd frame")},
	} {
		if _, err := decode(t, tt.frame, 64); err == nil {
			t.Errorf("%s: decoded", tt.name)
		}
	}
}

// TestDecodeLength: Decode says where a frame ends, and passes over a
// skippable frame.
func TestDecodeLength(t *testing.T) {
	frame, err := os.ReadFile(filepath.Join("testdata", "text-1.zst"))
	if err != nil {
		t.Fatal(err)
	}
	skippable := []byte{0x53, 0x2a, 0x4d, 0x18, 5, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'}
	var d Decoder
	dst := make([]byte, 300<<10)
	for _, tt := range []struct {
		name           string
		src            []byte
		produced, used int
	}{
		{"a frame, then other bytes", append(bytes.Clone(frame), 0xde, 0xad), len(dst), len(frame)},
		{"a skippable frame", append(bytes.Clone(skippable), frame...), 0, len(skippable)},
	} {
		n, used, err := d.Decode(dst, tt.src)
		if err != nil || n != tt.produced || used != tt.used {
			t.Errorf("%s: %d bytes from %d, %v; want %d from %d", tt.name, n, used, err, tt.produced, tt.used)
		}
	}
	if _, _, err := d.Decode(dst, skippable[:12]); err != ErrTruncated {
		t.Errorf("a skippable frame cut short: %v", err)
	}
}

func TestXXH64(t *testing.T) {
	if got := xxh64(nil); got != 0xef46db3751d8e999 {
		t.Errorf("xxh64(\"\") = %#x", got)
	}
}

// FuzzDecodeFrame compares the decoder with another implementation on
// arbitrary frames: both succeed with the same content, or both fail.
func FuzzDecodeFrame(f *testing.F) {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	for _, kind := range []string{"text", "mixed"} {
		for _, n := range []int{10, 1000, 70 << 10} {
			f.Add(enc.EncodeAll(sample(kind, n), nil))
		}
	}
	theirs, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<maxWindowLog))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		const size = 128 << 10
		var d Decoder
		dst := make([]byte, size)
		n, used, err := d.Decode(dst, frame)
		ours := dst[:n]
		if err == nil {
			frame = frame[:used] // what follows the frame is another's
		}
		want, err2 := theirs.DecodeAll(frame, nil)
		if err2 == nil && len(want) > size {
			err2 = ErrTooLong
		}
		switch {
		case err == nil && err2 == nil:
			if !bytes.Equal(ours, want) {
				t.Fatalf("decoded %d bytes, the other %d, different", len(ours), len(want))
			}
		case err == nil:
			// The other decoder is not the reference: where it refuses,
			// the zstd command (libzstd, what qemu links) decides.
			if ref, refErr := reference(frame); refErr == nil && bytes.Equal(ref, ours) {
				return
			} else if !errors.Is(refErr, exec.ErrNotFound) {
				t.Fatalf("decoded %d bytes; the other fails (%v), and the zstd command says %d bytes, %v", len(ours), err2, len(ref), refErr)
			}
			t.Fatalf("decoded %d bytes; the other fails: %v", len(ours), err2)
		}
	})
}

// reference decodes frame with the zstd command, or fails with
// exec.ErrNotFound when it is not installed.
func reference(frame []byte) ([]byte, error) {
	cmd := exec.Command("zstd", "-q", "-d", "-c")
	cmd.Stdin = bytes.NewReader(frame)
	return cmd.Output()
}

// BenchmarkDecode decodes 64 KiB clusters of each kind of content,
// compressed at the other encoder's default level, with this decoder and with
// the other implementation's, for comparison.
func BenchmarkDecode(b *testing.B) {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	theirs, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	for _, kind := range []string{"text", "mixed", "tokens", "skewed"} {
		cluster := sample(kind, 64<<10)
		frame := enc.EncodeAll(cluster, nil)
		dst := make([]byte, len(cluster))
		b.Run(kind+"/ours", func(b *testing.B) {
			var d Decoder
			b.SetBytes(int64(len(cluster)))
			for b.Loop() {
				if _, _, err := d.Decode(dst, frame); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(kind+"/other", func(b *testing.B) {
			b.SetBytes(int64(len(cluster)))
			for b.Loop() {
				if _, err := theirs.DecodeAll(frame, dst[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
