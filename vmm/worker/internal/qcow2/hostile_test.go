package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

// exercise opens b and, when that works, walks every extent and reads every
// byte; it returns the first error.
func exercise(b []byte) error {
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off, steps := int64(0), 0; off < img.VirtualSize() && steps < 1<<16; steps++ {
		e, err := img.Extent(off)
		if err != nil {
			return err
		}
		for p := e.Start; p < e.End(); p += int64(len(buf)) {
			if _, err := img.ReadAt(buf, p); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
		off = e.End()
	}
	if _, err := img.Snapshots(); err != nil {
		return err
	}
	return nil
}

func put32(off int, v uint32) func([]byte) []byte {
	return func(b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
}

func put64(off int, v uint64) func([]byte) []byte {
	return func(b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
}

func or64(off int, v uint64) func([]byte) []byte {
	return func(b []byte) []byte {
		binary.BigEndian.PutUint64(b[off:], binary.BigEndian.Uint64(b[off:])|v)
		return b
	}
}

// ext replaces the extension area at 0x70 with one extension and an end
// marker.
func ext(magic uint32, data []byte) func([]byte) []byte {
	return func(b []byte) []byte {
		clear(b[0x70:0x1000])
		binary.BigEndian.PutUint32(b[0x70:], magic)
		binary.BigEndian.PutUint32(b[0x74:], uint32(len(data)))
		copy(b[0x78:], data)
		return b
	}
}

func chain(fs ...func([]byte) []byte) func([]byte) []byte {
	return func(b []byte) []byte {
		for _, f := range fs {
			b = f(b)
		}
		return b
	}
}

// hostileBase builds a v3 64 KiB-cluster 4 MiB image with data at guest 0 and
// a compressed cluster at guest 1 MiB, and returns its bytes and the offset of
// its L2 table.
func hostileBase(t *testing.T, opts ...string) ([]byte, int) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "base.qcow2")
	qemutest.Create(t, p, "qcow2", "4M", opts...)
	qemutest.IO(t, p, "qcow2", "write -P 1 0 64k", "write -c -P 2 1M 64k", "write -P 3 2M 64k")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := exercise(b); err != nil {
		t.Fatalf("unpatched image: %v", err)
	}
	l1 := binary.BigEndian.Uint64(b[40:])
	l2 := binary.BigEndian.Uint64(b[l1:]) & L1OffsetMask
	return b, int(l2)
}

func TestHostileHeaders(t *testing.T) {
	qemutest.NeedQemu(t)
	base, l2 := hostileBase(t)
	l1 := int(binary.BigEndian.Uint64(base[40:]))
	compressed := int(binary.BigEndian.Uint64(base[l2+16*8:]) & (1<<54 - 1))
	last := (len(base) - 1) &^ 0xffff // the last cluster
	cases := []struct {
		name  string
		patch func([]byte) []byte
		code  errcode.Code
	}{
		{"magic", put32(0, 0x514649fa), errcode.Qcow2BadHeader},
		{"version 1", put32(4, 1), errcode.Qcow2BadHeader},
		{"version 4", put32(4, 4), errcode.Qcow2BadHeader},
		{"cluster_bits 8", put32(20, 8), errcode.Qcow2BadHeader},
		{"cluster_bits 22", put32(20, 22), errcode.Qcow2BadHeader},
		{"cluster_bits max", put32(20, 0xffffffff), errcode.Qcow2BadHeader},
		{"header_length 103", put32(100, 103), errcode.Qcow2BadHeader},
		{"header_length past cluster", put32(100, 0x10008), errcode.Qcow2BadHeader},
		{"header_length max", put32(100, 0xffffffff), errcode.Qcow2BadHeader},
		{"extension length max", put32(0x74, 0xffffffff), errcode.Qcow2BadHeader},
		{"extension length past cluster", put32(0x74, 0xfff8), errcode.Qcow2BadHeader},
		{"extension header past backing offset", chain(put64(8, 0x74), put32(16, 4)), errcode.Qcow2BadHeader},
		{"backing name 1024 bytes", chain(put64(8, 0x1000), put32(16, 1024)), errcode.Qcow2BadHeader},
		{"backing name past cluster", chain(put64(8, 0xfff0), put32(16, 100)), errcode.Qcow2BadHeader},
		{"backing offset past cluster", chain(put64(8, 0x10001), put32(16, 1)), errcode.Qcow2BadHeader},
		{"backing offset max", chain(put64(8, ^uint64(0)), put32(16, 1)), errcode.Qcow2BadHeader},
		{"backing format 16 bytes", ext(ExtBackingFormat, []byte("0123456789abcdef")), errcode.Qcow2BadHeader},
		{"crypt aes", put32(32, 1), errcode.Qcow2Encrypted},
		{"crypt luks", put32(32, 2), errcode.Qcow2Encrypted},
		{"crypt unknown", put32(32, 77), errcode.Qcow2Encrypted},
		{"fde extension", ext(ExtFDE, make([]byte, 16)), errcode.Qcow2Encrypted},
		{"data file bit", or64(72, IncompatDataFile), errcode.Qcow2ExternalData},
		{"data file extension", ext(ExtDataFile, []byte("/etc/passwd")), errcode.Qcow2ExternalData},
		{"unknown incompatible bit 5", or64(72, 1<<5), errcode.Qcow2UnknownFeature},
		{"unknown incompatible bit 63", or64(72, 1<<63), errcode.Qcow2UnknownFeature},
		{"refcount_order 7", put32(96, 7), errcode.Qcow2BadHeader},
		{"refcount_order max", put32(96, 0xffffffff), errcode.Qcow2BadHeader},
		{"l1_size 0", put32(36, 0), errcode.Qcow2BadHeader},
		{"l1_size 2^31", put32(36, 1<<31), errcode.Qcow2BadHeader},
		{"l1_size past EOF", put32(36, 100000), errcode.Qcow2Corrupt},
		{"l1 offset unaligned", put64(40, 0x30008), errcode.Qcow2BadHeader},
		{"l1 offset 0", put64(40, 0), errcode.Qcow2BadHeader},
		{"l1 offset max", put64(40, 0xffffffffffff0000), errcode.Qcow2BadHeader},
		{"size 2^63", put64(24, 1<<63), errcode.ImageTooLarge},
		{"size max", put64(24, ^uint64(0)), errcode.ImageTooLarge},
		{"size 2^62", put64(24, 1<<62), errcode.ImageTooLarge},
		{"size 2^63-1", put64(24, 1<<63-1), errcode.ImageTooLarge},
		{"refcount table too large", put32(56, 0x10000), errcode.Qcow2BadHeader},
		{"refcount table clusters 0", put32(56, 0), errcode.Qcow2BadHeader},
		{"refcount table past EOF", put32(56, 100), errcode.Qcow2Corrupt},
		{"refcount table unaligned", put64(48, 0x10200), errcode.Qcow2BadHeader},
		{"nb_snapshots too many", chain(put32(60, 70000), put64(64, 0x10000)), errcode.Qcow2BadHeader},
		{"snapshot table past EOF", chain(put32(60, 60000), put64(64, 0x10000)), errcode.Qcow2Corrupt},
		{"snapshot table unaligned", chain(put32(60, 1), put64(64, 0x10008)), errcode.Qcow2BadHeader},
		{"snapshot entry past EOF", chain(put32(60, 1), put64(64, uint64(last)), put32(last+12, 0xffff)), errcode.Qcow2Corrupt},
		{"snapshot extra data too large", chain(put32(60, 1), put64(64, 0x10000), put32(0x10000+36, 1<<20)), errcode.Qcow2Corrupt},
		{"compression_type 2", put32(104, 2<<24), errcode.Qcow2BadHeader},
		{"compression bit with zlib", or64(72, IncompatCompressionType), errcode.Qcow2BadHeader},
		{"zstd without compression bit", put32(104, 1<<24), errcode.Qcow2BadHeader},
		{"extended L2 with 8k clusters", chain(or64(72, IncompatExtendedL2), put32(20, 13)), errcode.Qcow2BadHeader},
		{"bitmaps extension length", chain(or64(88, AutoclearBitmaps), ext(ExtBitmaps, make([]byte, 20))), errcode.Qcow2BadHeader},
		{"bitmaps extension zero bitmaps", chain(or64(88, AutoclearBitmaps), ext(ExtBitmaps, make([]byte, 24))), errcode.Qcow2BadHeader},
		{"truncated to 50 bytes", func(b []byte) []byte { return b[:50] }, errcode.Qcow2BadHeader},
		{"truncated to 200 bytes", func(b []byte) []byte { return b[:200] }, errcode.Qcow2Corrupt},
		{"empty file", func(b []byte) []byte { return nil }, errcode.Qcow2BadHeader},

		// Errors found while mapping or reading.
		{"L1 entry unaligned", put64(l1, 0x8000000000000000|uint64(l2)+0x200), errcode.Qcow2Corrupt},
		{"L1 entry past EOF", put64(l1, 0x8000000070000000), errcode.Qcow2Corrupt},
		{"L1 entry at max offset", put64(l1, 0x80ffffffffff0000), errcode.Qcow2Corrupt},
		{"data cluster unaligned", put64(l2, 0x8000000000050200), errcode.Qcow2Corrupt},
		{"data cluster past EOF", put64(l2, 0x8000000070000000), errcode.Qcow2Corrupt},
		{"zero-alloc cluster unaligned", put64(l2, 0x8000000000050201), errcode.Qcow2Corrupt},
		{"compressed cluster past EOF", put64(l2+16*8, 0x4000000070000000), errcode.Qcow2BadCompressed},
		{"compressed cluster at 0", put64(l2+16*8, 0x4000000000000000), errcode.Qcow2BadCompressed},
		{"compressed cluster all ones", put64(l2+16*8, 0x7fffffffffffffff), errcode.Qcow2BadCompressed},
		{"compressed data garbage", func(b []byte) []byte {
			for i := compressed; i < compressed+64 && i < len(b); i++ {
				b[i] = 0xff
			}
			return b
		}, errcode.Qcow2BadCompressed},
		{"compressed data truncated", func(b []byte) []byte { return b[:compressed+10] }, errcode.Qcow2BadCompressed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.patch(bytes.Clone(base))
			err := exercise(b)
			if err == nil {
				t.Fatalf("no error, want %s", tc.code)
			}
			if got := errcode.Of(err); got != tc.code {
				t.Fatalf("error %q has code %s, want %s", err, got, tc.code)
			}
		})
	}
}

func TestHostileExtendedL2(t *testing.T) {
	qemutest.NeedQemu(t)
	base, l2 := hostileBase(t, "extended_l2=on")
	cases := []struct {
		name  string
		patch func([]byte) []byte
		code  errcode.Code
	}{
		{"alloc and zero", put64(l2+8, 0x0000000100000001), errcode.Qcow2Corrupt},
		{"alloc bits without a cluster", chain(put64(l2+16*5, 0), put64(l2+16*5+8, 1)), errcode.Qcow2Corrupt},
		{"unaligned cluster", put64(l2, 0x8000000000050200), errcode.Qcow2Corrupt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := exercise(tc.patch(bytes.Clone(base)))
			if got := errcode.Of(err); err == nil || got != tc.code {
				t.Fatalf("error %v (code %s), want %s", err, got, tc.code)
			}
		})
	}
}

func TestUnknownFeatureNamed(t *testing.T) {
	qemutest.NeedQemu(t)
	base, _ := hostileBase(t)
	// Rename qemu's feature table entry for incompatible bit 4 to bit 9.
	b := bytes.Clone(base)
	for off := 0x78; off+48 <= 0x78+0x180; off += 48 {
		if b[off] == 0 && b[off+1] == 4 {
			b[off+1] = 9
			copy(b[off+2:off+48], append([]byte("future thing"), make([]byte, 46)...))
		}
	}
	b = or64(72, 1<<9)(b)
	_, err := Open(bytes.NewReader(b), int64(len(b)))
	if errcode.Of(err) != errcode.Qcow2UnknownFeature || !bytes.Contains([]byte(err.Error()), []byte(`"future thing" (bit 9)`)) {
		t.Fatalf("error %v", err)
	}
}
