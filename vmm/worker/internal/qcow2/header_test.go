package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

func readHeaderFile(t *testing.T, path string) (*Header, int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("ReadHeader(%s): %v", filepath.Base(path), err)
	}
	return h, int64(len(b))
}

// qemuFeatureTable is the feature name table qemu 7.2 writes (reference §1.3).
var qemuFeatureTable = []FeatureName{
	{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
	{0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"}, {2, 1, "raw external data"},
}

// TestHeaderLayouts checks decoded headers against the hexdumps of the
// reference notes (§1.4).
func TestHeaderLayouts(t *testing.T) {
	qemutest.NeedQemu(t)
	type want struct {
		h        Header // compared field by field, extensions separately
		fileSize int64
		extMagic []uint32
		extEnd   int64
		features bool
	}
	cases := []struct {
		name string
		opts []string
		want want
	}{
		{"v3-64k", nil, want{
			h: Header{Magic: Magic, Version: 3, BackingFileOffset: 0x210, BackingFileSize: 10, ClusterBits: 16,
				Size: 64 << 20, L1Size: 1, L1TableOffset: 0x30000, RefcountTableOffset: 0x10000,
				RefcountTableClusters: 1, RefcountOrder: 4, HeaderLength: 0x70, BackingFile: "base.qcow2"},
			fileSize: 0x30008, extMagic: []uint32{ExtBackingFormat, ExtFeatureNames}, extEnd: 0x210, features: true,
		}},
		{"v2-64k", []string{"compat=0.10"}, want{
			h: Header{Magic: Magic, Version: 2, BackingFileOffset: 0x60, BackingFileSize: 10, ClusterBits: 16,
				Size: 64 << 20, L1Size: 1, L1TableOffset: 0x30000, RefcountTableOffset: 0x10000,
				RefcountTableClusters: 1, RefcountOrder: 4, HeaderLength: 72, BackingFile: "base.qcow2"},
			fileSize: 0x30008, extMagic: []uint32{ExtBackingFormat}, extEnd: 0x60,
		}},
		{"v3-512", []string{"cluster_size=512"}, want{
			h: Header{Magic: Magic, Version: 3, BackingFileOffset: 0x88, BackingFileSize: 10, ClusterBits: 9,
				Size: 64 << 20, L1Size: 2048, L1TableOffset: 0x600, RefcountTableOffset: 0x200,
				RefcountTableClusters: 1, RefcountOrder: 4, HeaderLength: 0x70, BackingFile: "base.qcow2"},
			fileSize: 0x600 + 2048*8, extMagic: []uint32{ExtBackingFormat}, extEnd: 0x88,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base.qcow2")
			qemutest.Create(t, base, "qcow2", "64M")
			ov := filepath.Join(dir, "ov.qcow2")
			args := []string{"create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"}
			for _, o := range tc.opts {
				args = append(args, "-o", o)
			}
			qemutest.Img(t, "", append(args, ov)...)
			h, size := readHeaderFile(t, ov)
			if size != tc.want.fileSize {
				t.Errorf("file size %#x, want %#x", size, tc.want.fileSize)
			}
			var magics []uint32
			for _, e := range h.Extensions {
				magics = append(magics, e.Magic)
			}
			if !reflect.DeepEqual(magics, tc.want.extMagic) {
				t.Errorf("extensions %#x, want %#x", magics, tc.want.extMagic)
			}
			if h.ExtensionsEnd != tc.want.extEnd {
				t.Errorf("ExtensionsEnd %#x, want %#x", h.ExtensionsEnd, tc.want.extEnd)
			}
			if f, ok := h.BackingFormat(); !ok || f != "qcow2" {
				t.Errorf("BackingFormat() = %q, %v", f, ok)
			}
			if tc.want.features {
				if d, _ := h.Extension(ExtFeatureNames); len(d) != 0x180 {
					t.Errorf("feature table is %#x bytes, want 0x180", len(d))
				}
				if got := h.FeatureNames(); !reflect.DeepEqual(got, qemuFeatureTable) {
					t.Errorf("FeatureNames() = %v", got)
				}
			} else if h.FeatureNames() != nil {
				t.Errorf("unexpected feature table")
			}
			got := *h
			got.Extensions, got.ExtensionsEnd = nil, 0
			if !reflect.DeepEqual(got, tc.want.h) {
				t.Errorf("header\n got %+v\nwant %+v", got, tc.want.h)
			}
		})
	}
}

// TestHeaderCrafted covers header_length 104 (no compression_type), unknown
// header fields and unknown extensions, as in the crafted example of §1.4.
func TestHeaderCrafted(t *testing.T) {
	qemutest.NeedQemu(t)
	p := filepath.Join(t.TempDir(), "img.qcow2")
	qemutest.Create(t, p, "qcow2", "64M")
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		headerLen   uint32
		unknown     []byte
		compression uint8
	}{
		{"len104", 104, nil, 0},
		{"len112", 112, nil, 0},
		{"len128-unknown", 128, []byte("0123456789abcdef"), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(orig)
			clear(b[100:0x400])
			binary.BigEndian.PutUint32(b[100:], tc.headerLen)
			copy(b[112:], tc.unknown)
			off := int(tc.headerLen)
			ext := func(magic uint32, data string) {
				binary.BigEndian.PutUint32(b[off:], magic)
				binary.BigEndian.PutUint32(b[off+4:], uint32(len(data)))
				copy(b[off+8:], data)
				off += 8 + (len(data)+7)&^7
			}
			ext(0xdeadbeef, "hello")
			ext(0x0badf00d, "")
			ext(ExtEnd, "")
			h, err := ParseHeader(b[:65536], int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if h.HeaderLength != tc.headerLen || !bytes.Equal(h.UnknownFields, tc.unknown) || h.CompressionType != tc.compression {
				t.Errorf("header_length %d unknown %q compression %d", h.HeaderLength, h.UnknownFields, h.CompressionType)
			}
			want := []Extension{{0xdeadbeef, []byte("hello")}, {0x0badf00d, []byte{}}}
			if !reflect.DeepEqual(h.Extensions, want) {
				t.Errorf("extensions %+v, want %+v", h.Extensions, want)
			}
			if h.ExtensionsEnd != int64(off) {
				t.Errorf("ExtensionsEnd %d, want %d", h.ExtensionsEnd, off)
			}
		})
	}
}

// TestEmptyTableOffsets: an empty table's offset is still bounded, as qemu
// bounds it (below 2^63), and opens or fails as in qemu-img.
func TestEmptyTableOffsets(t *testing.T) {
	qemutest.NeedQemu(t)
	cases := []struct {
		name   string
		size   string
		field  int // the offset's place in the header
		off    uint64
		refuse bool
	}{
		{"l1-below-2^63", "0", 40, 0x7fff000000000000, false},
		{"l1-past-2^63", "0", 40, 0xfff6000000000000, true},
		{"snapshots-below-2^63", "64M", 64, 0x7fff000000000000, false},
		{"snapshots-past-2^63", "64M", 64, 0x8000000000000000, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img.qcow2")
			qemutest.Create(t, p, "qcow2", tc.size)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			binary.BigEndian.PutUint64(b[tc.field:], tc.off)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			r := qemutest.System.Run(t, "", "info", p)
			if qemuRefuses := r.Code != 0; qemuRefuses != tc.refuse {
				t.Fatalf("qemu-img info exits %d: the case expects refused=%v", r.Code, tc.refuse)
			}
			_, err = ParseHeader(b[:65536], int64(len(b)))
			if (err != nil) != tc.refuse {
				t.Errorf("ParseHeader: %v, want refused=%v", err, tc.refuse)
			}
			if err != nil && errcode.Of(err) != errcode.Qcow2BadHeader {
				t.Errorf("ParseHeader: %v, want %s", err, errcode.Qcow2BadHeader)
			}
		})
	}
}

func TestRequiredL1Size(t *testing.T) {
	cases := []struct {
		size     uint64
		bits     uint32
		extended bool
		want     uint64
	}{
		{0, 16, false, 0},
		{1, 16, false, 1},
		{512 << 20, 16, false, 1},
		{512<<20 + 1, 16, false, 2},
		{64 << 20, 9, false, 2048},
		{256 << 20, 16, true, 1},
		{256<<20 + 512, 16, true, 2},
		{1 << 62, 21, false, 1 << 23},
		{^uint64(0), 9, false, 1 << 49},
	}
	for _, tc := range cases {
		es := 8
		if tc.extended {
			es = 16
		}
		if got := requiredL1(tc.size, tc.bits, es); got != tc.want {
			t.Errorf("requiredL1(%d, %d, %d) = %d, want %d", tc.size, tc.bits, es, got, tc.want)
		}
	}
}
