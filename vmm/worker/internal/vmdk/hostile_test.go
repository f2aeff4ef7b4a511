package vmdk

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

// base is a small valid image with data, zeroed and unallocated grains.
func base() spec {
	return spec{capacity: 330, grain: 8, gtes: 4, zeroed: true, descArea: 20,
		grains: map[uint64][]byte{0: fill(1, 4096), 5: fill(3, 4096), 40: fill(5, 512)},
		zeros:  []uint64{2}}
}

// withHeader rewrites the header in sector 0.
func withHeader(b []byte, f func(*Header)) []byte {
	h, err := ParseHeader(b)
	if err != nil {
		panic(err)
	}
	f(&h)
	enc, _ := h.AppendBinary(nil)
	out := bytes.Clone(b)
	copy(out, enc)
	return out
}

// withDescriptor replaces the descriptor text, keeping the area's size.
func withDescriptor(b []byte, text string) []byte {
	h, _ := ParseHeader(b)
	out := bytes.Clone(b)
	area := out[512 : 512+h.DescriptorSize*SectorSize]
	clear(area)
	copy(area, text)
	return out
}

func defaultDesc(s spec) string { return s.descriptor() }

func TestHostileOpen(t *testing.T) {
	s := base()
	good := build(s)
	h0, _ := ParseHeader(good)
	stream := build(spec{capacity: 330, grain: 8, gtes: 4, compressed: true, footer: true,
		grains: map[uint64][]byte{1: fill(1, 4096)}})
	desc := defaultDesc(s)
	longDesc := spec{capacity: 330, grain: 8, gtes: 4, desc: desc + strings.Repeat("#", 11000) + "\n"}

	cases := []struct {
		name string
		b    []byte
		code errcode.Code
	}{
		{"empty", nil, errcode.VmdkBadHeader},
		{"tiny", []byte("KDMV"), errcode.VmdkBadHeader},
		{"random", bytes.Repeat([]byte{0x9c, 0x11, 0xf0}, 400), errcode.VmdkBadHeader},
		{"cowd", append([]byte("COWD"), make([]byte, 2044)...), errcode.VmdkUnsupported},
		{"version 4", withHeader(good, func(h *Header) { h.Version = 4 }), errcode.VmdkUnsupported},
		{"compress algorithm 2", withHeader(good, func(h *Header) { h.CompressAlgorithm = 2 }), errcode.VmdkUnsupported},
		{"grain size 0", withHeader(good, func(h *Header) { h.GrainSize = 0 }), errcode.VmdkBadHeader},
		{"grain size huge", withHeader(good, func(h *Header) { h.GrainSize = 1 << 40 }), errcode.VmdkBadHeader},
		{"compressed grain too big", withHeader(good, func(h *Header) { h.GrainSize = 1 << 20; h.CompressAlgorithm = 1 }), errcode.VmdkUnsupported},
		{"no GTEs", withHeader(good, func(h *Header) { h.NumGTEsPerGT = 0 }), errcode.VmdkBadHeader},
		{"GTEs absurd", withHeader(good, func(h *Header) { h.NumGTEsPerGT = 0xffffffff }), errcode.VmdkBadHeader},
		{"capacity overflow", withHeader(good, func(h *Header) { h.Capacity = 1 << 62 }), errcode.VmdkBadHeader},
		{"capacity max u64", withHeader(good, func(h *Header) { h.Capacity = ^uint64(0) }), errcode.VmdkBadHeader},
		{"GD too large", withHeader(good, func(h *Header) { h.Capacity = 1 << 50; h.GrainSize = 1 }), errcode.VmdkBadHeader},
		{"GD past end", withHeader(good, func(h *Header) { h.Capacity = 1 << 30 }), errcode.VmdkBadHeader},
		{"GD in header", withHeader(good, func(h *Header) { h.GDOffset = 0 }), errcode.VmdkBadHeader},
		{"GD in descriptor", withHeader(good, func(h *Header) { h.GDOffset = 1 }), errcode.VmdkBadHeader},
		{"GD offset huge", withHeader(good, func(h *Header) { h.GDOffset = 1 << 60 }), errcode.VmdkBadHeader},
		{"RGD in header", withHeader(good, func(h *Header) { h.RGDOffset = 1 }), errcode.VmdkBadHeader},
		{"RGD past end", withHeader(good, func(h *Header) { h.RGDOffset = 1 << 40 }), errcode.VmdkBadHeader},
		{"overhead past end", withHeader(good, func(h *Header) { h.OverHead = 1 << 20 }), errcode.VmdkCorrupt},
		{"capacity 0", withHeader(good, func(h *Header) { h.Capacity = 0 }), errcode.VmdkExternalExtent},
		{"no descriptor", withHeader(good, func(h *Header) { h.DescriptorOffset = 0 }), errcode.VmdkBadDescriptor},
		{"descriptor elsewhere", withHeader(good, func(h *Header) { h.DescriptorOffset = 2 }), errcode.VmdkUnsupported},
		{"descriptor past end", withHeader(good, func(h *Header) { h.DescriptorSize = 1 << 50 }), errcode.VmdkBadHeader},
		{"descriptor unterminated", withDescriptor(good, strings.Repeat("a", int(h0.DescriptorSize)*SectorSize)), errcode.VmdkBadDescriptor},
		{"descriptor beyond qemu's window", build(longDesc), errcode.VmdkBadDescriptor},
		{"no CID", withDescriptor(good, strings.Replace(desc, "CID=1234abcd\n", "", 1)), errcode.VmdkBadDescriptor},
		{"no parentCID", withDescriptor(good, strings.Replace(desc, "parentCID=ffffffff\n", "", 1)), errcode.VmdkBadDescriptor},
		{"CID not hex", withDescriptor(good, strings.Replace(desc, "CID=1234abcd", "CID=xyz", 1)), errcode.VmdkBadDescriptor},
		{"CID too long", withDescriptor(good, strings.Replace(desc, "CID=1234abcd", "CID=1234abcd0", 1)), errcode.VmdkBadDescriptor},
		{"CID in a comment first", withDescriptor(good, strings.Replace(desc, "version=1\n", "# CID=deadbeef\nversion=1\n", 1)), errcode.VmdkBadDescriptor},
		{"parentCID before CID", withDescriptor(good, strings.Replace(desc, "CID=1234abcd\nparentCID=ffffffff\n", "parentCID=ffffffff\nCID=1234abcd\n", 1)), errcode.VmdkBadDescriptor},
		{"parent hint unterminated", withDescriptor(good, strings.Replace(desc, "createType", "parentFileNameHint=\"x\ncreateType", 1)), errcode.VmdkBadDescriptor},
		{"parent hint too long", withDescriptor(good, strings.Replace(desc, "createType", "parentFileNameHint=\""+strings.Repeat("p", 1024)+"\"\ncreateType", 1)), errcode.VmdkBadDescriptor},
		{"bad extent line", withDescriptor(good, strings.Replace(desc, "RW 330 SPARSE", "RW lots SPARSE", 1)), errcode.VmdkBadDescriptor},
		{"createType monolithicFlat", withDescriptor(good, strings.Replace(desc, "monolithicSparse", "monolithicFlat", 1)), errcode.VmdkExternalExtent},
		{"createType twoGbMaxExtentSparse", withDescriptor(good, strings.Replace(desc, "monolithicSparse", "twoGbMaxExtentSparse", 1)), errcode.VmdkExternalExtent},
		{"createType unknown", withDescriptor(good, strings.Replace(desc, "monolithicSparse", "fancy", 1)), errcode.VmdkUnsupported},
		{"flat extent", withDescriptor(good, strings.Replace(desc, `RW 330 SPARSE "t.vmdk"`, `RW 330 FLAT "/etc/passwd" 0`, 1)), errcode.VmdkExternalExtent},
		{"vmfs extent", withDescriptor(good, strings.Replace(desc, `RW 330 SPARSE "t.vmdk"`, `RW 330 VMFS "disk-flat.vmdk"`, 1)), errcode.VmdkExternalExtent},
		{"two extents", withDescriptor(good, strings.Replace(desc, `RW 330 SPARSE "t.vmdk"`, "RW 330 SPARSE \"t.vmdk\"\nRW 330 SPARSE \"t2.vmdk\"", 1)), errcode.VmdkExternalExtent},
		{"zero extent", withDescriptor(good, strings.Replace(desc, `RW 330 SPARSE "t.vmdk"`, `RW 330 ZERO`, 1)), errcode.VmdkUnsupported},
		{"footer missing", withHeader(good, func(h *Header) { h.GDOffset = GDAtEnd }), errcode.VmdkBadHeader},
		{"footer no room", withHeader(good[:1024], func(h *Header) { h.GDOffset = GDAtEnd; h.OverHead = 1 }), errcode.VmdkBadHeader},
		{"footer bad eos", func() []byte { b := bytes.Clone(stream); b[len(b)-512+12] = 9; return b }(), errcode.VmdkBadHeader},
		{"footer bad marker", func() []byte { b := bytes.Clone(stream); b[len(b)-1536+12] = 9; return b }(), errcode.VmdkBadHeader},
		{"footer GD at end", func() []byte {
			b := bytes.Clone(stream)
			binary.LittleEndian.PutUint64(b[len(b)-1024+56:], GDAtEnd)
			return b
		}(), errcode.VmdkBadHeader},
		{"descriptor file", []byte("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"../secret.txt\" 0\n"), errcode.VmdkExternalExtent},
		{"descriptor file sparse", []byte("version=1\ncreateType=\"twoGbMaxExtentSparse\"\nRW 4192256 SPARSE \"d-s001.vmdk\"\n"), errcode.VmdkExternalExtent},
		{"descriptor file garbage", []byte("# x\nversion=2\r\n\x00\xff"), errcode.VmdkExternalExtent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Open(bytes.NewReader(tc.b), int64(len(tc.b)))
			if err == nil {
				t.Fatalf("Open succeeded: %+v", img.Header())
			}
			if got := errcode.Of(err); got != tc.code {
				t.Errorf("code %s (%v), want %s", got, err, tc.code)
			}
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}
}

// TestHostileRead covers damage that qemu only notices when it reads the grain.
func TestHostileRead(t *testing.T) {
	s := base()
	good := build(s)
	h, _ := ParseHeader(good)
	gd := int(h.GDOffset) * SectorSize
	gt0 := int(binary.LittleEndian.Uint32(good[gd:])) * SectorSize

	stream := spec{capacity: 330, grain: 8, gtes: 4, compressed: true, grains: map[uint64][]byte{1: fill(1, 4096)}}
	sb := build(stream)
	sh, _ := ParseHeader(sb)
	sgt0 := int(binary.LittleEndian.Uint32(sb[sh.GDOffset*SectorSize:])) * SectorSize
	grain1 := int(binary.LittleEndian.Uint32(sb[sgt0+4:])) * SectorSize

	patch := func(b []byte, at int, v uint32) []byte {
		b = bytes.Clone(b)
		binary.LittleEndian.PutUint32(b[at:], v)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		off  int64
	}{
		{"GT past end", patch(good, gd, 1<<30), 0},
		{"grain past end", patch(good, gt0, 1<<30), 0},
		{"grain straddles end", patch(good, gt0, uint32(len(good)/SectorSize-1)), 0},
		{"marker size 0", patch(sb, grain1+8, 0), 4096},
		{"marker size huge", patch(sb, grain1+8, 1<<31), 4096},
		{"marker past end", patch(sb, sgt0+4, uint32(len(sb)/SectorSize)), 4096},
		{"bad zlib", func() []byte { b := bytes.Clone(sb); b[grain1+12] ^= 0xff; return b }(), 4096},
		{"bad checksum", func() []byte {
			b := bytes.Clone(sb)
			size := binary.LittleEndian.Uint32(b[grain1+8:])
			b[grain1+12+int(size)-1] ^= 0xff
			return b
		}(), 4096},
		{"truncated zlib", patch(sb, grain1+8, 10), 4096},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Open(bytes.NewReader(tc.b), int64(len(tc.b)))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			_, eerr := img.Extent(tc.off)
			_, rerr := img.ReadAt(make([]byte, 4096), tc.off)
			if rerr == nil {
				t.Fatalf("ReadAt succeeded (Extent: %v)", eerr)
			}
			if testing.Verbose() {
				t.Log(rerr, "; ", eerr)
			}
			if got := errcode.Of(rerr); got != errcode.VmdkCorrupt {
				t.Errorf("code %s (%v)", got, rerr)
			}
			if !img.Compressed() {
				if got := errcode.Of(eerr); got != errcode.VmdkCorrupt {
					t.Errorf("Extent: code %s (%v)", got, eerr)
				}
			}
		})
	}
}

// TestGrainOverflow: a compressed grain that inflates to more than a grain is
// refused, like qemu's uncompress into a one-grain buffer.
func TestGrainOverflow(t *testing.T) {
	s := spec{capacity: 64, grain: 8, gtes: 4, compressed: true, grains: map[uint64][]byte{0: fill(1, 4096)}}
	b := build(s)
	big := compressGrain(spec{capacity: 64, grain: 16}, 0, 8192) // two grains' worth
	h, _ := ParseHeader(b)
	gt := int(binary.LittleEndian.Uint32(b[h.GDOffset*SectorSize:])) * SectorSize
	binary.LittleEndian.PutUint32(b[gt:], uint32(len(b)/SectorSize))
	b = append(b, big...)
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.ReadAt(make([]byte, 512), 0); errcode.Of(err) != errcode.VmdkCorrupt || !strings.Contains(err.Error(), "more than a grain") {
		t.Errorf("ReadAt: %v", err)
	}
}

// TestDescriptorFileOracle: the descriptor-only file of the reference notes,
// which makes qemu read a host file, is detected as vmdk (as qemu does) and
// refused without opening anything.
func TestDescriptorFileOracle(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret.txt")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("TOPSECRET-DATA\n"), 100), 0o600); err != nil {
		t.Fatal(err)
	}
	desc := "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n" +
		"# Extent description\nRW 2048 FLAT \"" + secret + "\" 0\n"
	path := filepath.Join(dir, "d.vmdk")
	if err := os.WriteFile(path, []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	if Detect([]byte(desc)) != DescriptorFile {
		t.Fatal("not detected as a descriptor file")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Open(f, int64(len(desc)))
	if errcode.Of(err) != errcode.VmdkExternalExtent {
		t.Fatalf("Open: %v", err)
	}
	if strings.Contains(err.Error(), "TOPSECRET") {
		t.Fatal("the extent was read")
	}
	qemutest.NeedQemu(t)
	// qemu probes it as vmdk (no -f) and would follow the extent.
	out := qemutest.Img(t, dir, "info", "--output=json", "d.vmdk")
	if !bytes.Contains(out, []byte(`"format": "vmdk"`)) {
		t.Errorf("qemu did not probe vmdk:\n%s", out)
	}
}

// TestProbeOracle compares Detect with qemu's format probe on small files.
func TestProbeOracle(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	for i, text := range []string{
		"# Disk DescriptorFile\nversion=1\nCID=1\n",
		"version=1\n",
		"version=3\r\nx",
		"   \n# c\nversion=2\n",
		"\nversion=1\n",      // an empty line stops qemu's probe
		"\tversion=1\n",      // so does a tab
		"version=4\n",        // unknown version
		"version=1",          // no line end
		"# only a comment\n", // no version
		"KDMV" + strings.Repeat("\x00", 600),
		"COWD" + strings.Repeat("\x00", 600),
		"hello world\n",
	} {
		name := filepath.Join(dir, "p"+itoa(int64(i)))
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		r := qemutest.Run(t, "", "info", "--output=json", name)
		out := append(r.Stdout, r.Stderr...)
		qemuRaw := bytes.Contains(out, []byte(`"format": "raw"`))
		if got := Probe([]byte(text)); got == qemuRaw {
			t.Errorf("%q: Probe = %v, qemu:\n%s", text, got, out)
		}
	}
}
