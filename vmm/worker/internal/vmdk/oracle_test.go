package vmdk

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/layer/layertest"
)

// ourMap renders img's extents the way qemu-img map does for an image without a
// backing file, merging like qemu (equal flags, contiguous offsets).
func ourMap(t *testing.T, img layer.Image) []proto.MapEntry {
	t.Helper()
	var m []proto.MapEntry
	for off := int64(0); off < img.VirtualSize(); {
		e, err := img.Extent(off)
		if err != nil {
			t.Fatalf("Extent(%d): %v", off, err)
		}
		if e.Start != off || e.Length <= 0 || e.End() > img.VirtualSize() {
			t.Fatalf("Extent(%d) = %+v", off, e)
		}
		me := proto.MapEntry{Start: e.Start, Length: e.Length}
		switch e.Kind {
		case layer.Unallocated:
			me.Zero = true
		case layer.Zero:
			me.Present, me.Zero = true, true
		case layer.Data:
			me.Present, me.Data = true, true
		}
		if e.HostOffset >= 0 {
			o := e.HostOffset
			me.Offset = &o
		}
		if n := len(m); n > 0 {
			p := &m[n-1]
			if p.Present == me.Present && p.Zero == me.Zero && p.Data == me.Data &&
				(p.Offset == nil) == (me.Offset == nil) && (p.Offset == nil || *p.Offset+p.Length == *me.Offset) {
				p.Length += me.Length
				off = e.End()
				continue
			}
		}
		m = append(m, me)
		off = e.End()
	}
	return m
}

func mapString(m []proto.MapEntry) string {
	var b bytes.Buffer
	for _, e := range m {
		off := "-"
		if e.Offset != nil {
			off = itoa(*e.Offset)
		}
		b.WriteString(itoa(e.Start) + "+" + itoa(e.Length) + " p=" + btoa(e.Present) + " z=" + btoa(e.Zero) + " d=" + btoa(e.Data) + " off=" + off + "\n")
	}
	return b.String()
}

func itoa(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func btoa(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

type qemuInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	ClusterSize     int64  `json:"cluster-size"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	FormatSpecific  struct {
		Data struct {
			CID        uint32 `json:"cid"`
			ParentCID  uint32 `json:"parent-cid"`
			CreateType string `json:"create-type"`
			Extents    []struct {
				Compressed  bool  `json:"compressed"`
				VirtualSize int64 `json:"virtual-size"`
				ClusterSize int64 `json:"cluster-size"`
			} `json:"extents"`
		} `json:"data"`
	} `json:"format-specific"`
}

func info(t *testing.T, dir, file string) qemuInfo {
	t.Helper()
	var i qemuInfo
	if err := json.Unmarshal(qemutest.Img(t, dir, "info", "--output=json", "-f", "vmdk", file), &i); err != nil {
		t.Fatal(err)
	}
	return i
}

func openFile(t *testing.T, path string) *Image { return layertest.OpenFile(t, path, Open) }

// readAll reads the whole guest disk in chunks of odd sizes, to cross grain
// boundaries in every way.
func readAll(t *testing.T, img layer.Image) []byte {
	t.Helper()
	out := make([]byte, img.VirtualSize())
	chunk := 100000
	for off := 0; off < len(out); off += chunk {
		end := min(off+chunk, len(out))
		n, err := img.ReadAt(out[off:end], int64(off))
		if n != end-off || err != nil {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", off, end-off, n, err)
		}
	}
	return out
}

func rawOf(t *testing.T, dir, file string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "out.raw")
	qemutest.Img(t, dir, "convert", "-f", "vmdk", "-O", "raw", file, raw)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkAgainstQemu compares content (parentless images only), map and info.
func checkAgainstQemu(t *testing.T, dir, file string, parentless bool) *Image {
	t.Helper()
	img := openFile(t, filepath.Join(dir, file))
	if parentless {
		if want, got := rawOf(t, dir, file), readAll(t, img); !bytes.Equal(got, want) {
			t.Errorf("%s: content differs from qemu-img convert", file)
		}
	}
	if want, got := mapString(qemutest.Map(t, qemutest.Alone("vmdk", filepath.Join(dir, file)), "")), mapString(ourMap(t, img)); got != want {
		t.Errorf("%s: map differs\nqemu:\n%sours:\n%s", file, want, got)
	}
	qi := info(t, dir, file)
	d := qi.FormatSpecific.Data
	if img.CID() != d.CID || img.ParentCID() != d.ParentCID || img.CreateType() != d.CreateType {
		t.Errorf("%s: cid %d parent %d type %q; qemu says %d %d %q", file,
			img.CID(), img.ParentCID(), img.CreateType(), d.CID, d.ParentCID, d.CreateType)
	}
	if img.VirtualSize() != qi.VirtualSize || img.GrainSize() != qi.ClusterSize {
		t.Errorf("%s: size %d grain %d; qemu says %d %d", file, img.VirtualSize(), img.GrainSize(), qi.VirtualSize, qi.ClusterSize)
	}
	if len(d.Extents) != 1 || d.Extents[0].Compressed != img.Compressed() {
		t.Errorf("%s: qemu extents %+v, compressed %v", file, d.Extents, img.Compressed())
	}
	name, ok := img.ParentFileNameHint()
	if name != qi.BackingFilename || (ok && qi.BackingFormat != "vmdk") {
		t.Errorf("%s: parent %q (%v); qemu says %q %q", file, name, ok, qi.BackingFilename, qi.BackingFormat)
	}
	return img
}

func TestQemuImages(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	img := func(args ...string) { qemutest.Img(t, dir, args...) }
	io := func(file string, cmds ...string) { qemutest.IO(t, filepath.Join(dir, file), "vmdk", cmds...) }

	img("create", "-q", "-f", "vmdk", "empty.vmdk", "8M")

	img("create", "-q", "-f", "vmdk", "base.vmdk", "16M")
	io("base.vmdk", "write -P 0xab 0 128k", "write -P 0xcd 1M 64k", "write -P 0x5a 3M 4k",
		"write -P 0x11 8M 64k", "write -P 0x22 16320k 64k")

	img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "ov.vmdk")
	io("ov.vmdk", "write -P 0x33 64k 64k", "write -P 0x44 10M 128k")

	img("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", "zg.vmdk", "8M")
	io("zg.vmdk", "write -P 1 0 512k", "write -z 64k 128k", "write -z 1M 64k",
		"write -z 2M 100k", "write -P 2 7M 4k")

	img("convert", "-f", "vmdk", "-O", "vmdk", "-o", "subformat=streamOptimized", "base.vmdk", "stream.vmdk")
	// qemu appends compressed grains to a stream image it writes to.
	img("convert", "-f", "vmdk", "-O", "vmdk", "-o", "subformat=streamOptimized", "base.vmdk", "stream-append.vmdk")
	io("stream-append.vmdk", "write -P 0x66 5M 64k", "write -P 0x67 6M 192k")

	// A size that is not a whole number of grains, with data in the last one.
	img("create", "-q", "-f", "vmdk", "odd.vmdk", "1000k")
	io("odd.vmdk", "write -P 7 960k 40k", "write -P 8 0 1k")
	img("convert", "-f", "vmdk", "-O", "vmdk", "-o", "subformat=streamOptimized", "odd.vmdk", "odd-stream.vmdk")

	// Small grain tables: a GD with many entries.
	img("create", "-q", "-f", "vmdk", "-o", "adapter_type=lsilogic,hwversion=6", "big.vmdk", "100M")
	io("big.vmdk", "write -P 9 40M 1M", "write -P 10 99M 64k")

	for _, tc := range []struct {
		file       string
		parentless bool
		createType string
		compressed bool
	}{
		{"empty.vmdk", true, "monolithicSparse", false},
		{"base.vmdk", true, "monolithicSparse", false},
		{"ov.vmdk", false, "monolithicSparse", false},
		{"zg.vmdk", true, "monolithicSparse", false},
		{"stream.vmdk", true, "streamOptimized", true},
		{"stream-append.vmdk", true, "streamOptimized", true},
		{"odd.vmdk", true, "monolithicSparse", false},
		{"odd-stream.vmdk", true, "streamOptimized", true},
		{"big.vmdk", true, "monolithicSparse", false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			img := checkAgainstQemu(t, dir, tc.file, tc.parentless)
			if img.CreateType() != tc.createType || img.Compressed() != tc.compressed {
				t.Errorf("createType %q compressed %v", img.CreateType(), img.Compressed())
			}
			if ct, _ := img.Descriptor().CreateType(); ct != tc.createType {
				t.Errorf("descriptor createType %q", ct)
			}
			raw, err := os.ReadFile(filepath.Join(dir, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			text := raw[512 : 512+bytes.IndexByte(raw[512:], 0)]
			if got := img.DescriptorText(); got != string(text) {
				t.Errorf("descriptor text differs:\n%q\n%q", got, text)
			}
			if got := img.Descriptor().Render(); !bytes.Equal(got, text) {
				t.Errorf("descriptor does not render back")
			}
			if got, _ := img.Header().AppendBinary(nil); !bytes.Equal(got, raw[:HeaderSize]) {
				t.Errorf("header does not encode back:\n%x\n%x", got, raw[:HeaderSize])
			}
			if img.RGDOffset() == 0 || len(img.RGD()) != len(img.GD()) {
				t.Errorf("qemu writes a redundant GD: offset %d, %d entries", img.RGDOffset(), len(img.RGD()))
			}
		})
	}

	t.Run("parent", func(t *testing.T) {
		base := openFile(t, filepath.Join(dir, "base.vmdk"))
		ov := openFile(t, filepath.Join(dir, "ov.vmdk"))
		if name, ok := ov.ParentFileNameHint(); !ok || name != "base.vmdk" {
			t.Errorf("parent hint %q, %v", name, ok)
		}
		if ov.ParentCID() != base.CID() {
			t.Errorf("parentCID %x, base CID %x", ov.ParentCID(), base.CID())
		}
		if _, ok := base.ParentFileNameHint(); ok || base.ParentCID() != 0xffffffff {
			t.Errorf("base has a parent")
		}
		// The overlay's own grains read as written, the rest as zeros.
		want := make([]byte, 16<<20)
		copy(want[64<<10:], bytes.Repeat([]byte{0x33}, 64<<10))
		copy(want[10<<20:], bytes.Repeat([]byte{0x44}, 128<<10))
		if !bytes.Equal(readAll(t, ov), want) {
			t.Error("overlay content differs")
		}
	})

	t.Run("zeroed", func(t *testing.T) {
		zg := openFile(t, filepath.Join(dir, "zg.vmdk"))
		if !zg.ZeroedGrains() {
			t.Fatal("zeroed_grain=on image without FlagZeroedGrain")
		}
		e, err := zg.Extent(64 << 10)
		if err != nil || e.Kind != layer.Zero || e.Length != 128<<10 || e.HostOffset != -1 {
			t.Errorf("Extent(64k) = %+v, %v", e, err)
		}
	})

	t.Run("compressed extents", func(t *testing.T) {
		s := openFile(t, filepath.Join(dir, "stream.vmdk"))
		e, err := s.Extent(4096)
		if err != nil || e.Kind != layer.Data || !e.Compressed || e.HostOffset != -1 || e.End() != 128<<10 {
			t.Errorf("Extent(4096) = %+v, %v", e, err)
		}
	})
}

// TestBuiltImages checks hand-built images, including the VMware stream layout
// with the header in a footer (qemu never writes it), against the expected
// content and against qemu.
func TestBuiltImages(t *testing.T) {
	grains := map[uint64][]byte{0: fill(1, 4096), 1: fill(2, 100), 5: fill(3, 4096), 6: fill(4, 4096), 40: fill(5, 512)}
	cases := []struct {
		name string
		s    spec
	}{
		{"sparse", spec{capacity: 330, grain: 8, gtes: 4, grains: grains}},
		{"sparse-no-rgd", spec{capacity: 330, grain: 8, gtes: 4, noRGD: true, grains: grains}},
		{"zeroed", spec{capacity: 330, grain: 8, gtes: 4, zeroed: true, grains: grains, zeros: []uint64{2, 3, 7}}},
		{"stream", spec{capacity: 330, grain: 8, gtes: 4, compressed: true, grains: grains}},
		{"stream-nomarker", spec{capacity: 330, grain: 8, gtes: 4, compressed: true, noMarkers: true, grains: grains}},
		{"stream-footer", spec{capacity: 330, grain: 8, gtes: 4, compressed: true, footer: true, grains: grains}},
		{"stream-footer-512", spec{capacity: 4096, grain: 128, gtes: 512, compressed: true, footer: true,
			grains: map[uint64][]byte{0: fill(9, 65536), 31: fill(8, 1000)}}},
		{"gte-one-without-flag", spec{capacity: 64, grain: 8, gtes: 4, grains: map[uint64][]byte{0: fill(1, 4096), 5: fill(2, 9)}, zeros: []uint64{2}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := build(tc.s)
			img, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if (img.FooterOffset() >= 0) != tc.s.footer {
				t.Errorf("FooterOffset %d", img.FooterOffset())
			}
			want := tc.s.content()
			if tc.name == "gte-one-without-flag" {
				// Without the flag a GTE of 1 is a grain at sector 1: the descriptor.
				copy(want[2*4096:3*4096], b[512:512+4096])
			}
			if got := readAll(t, img); !bytes.Equal(got, want) {
				t.Errorf("content differs")
			}
			qemutest.NeedQemu(t)
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "t.vmdk"), b, 0o644); err != nil {
				t.Fatal(err)
			}
			checkAgainstQemu(t, dir, "t.vmdk", true)
		})
	}
}

func TestReadAtBounds(t *testing.T) {
	s := spec{capacity: 64, grain: 8, gtes: 4, grains: map[uint64][]byte{7: fill(1, 4096)}}
	b := build(s)
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 1000)
	n, err := img.ReadAt(p, img.VirtualSize()-500)
	if n != 500 || err == nil || !bytes.Equal(p[:500], s.content()[len(s.content())-500:]) {
		t.Errorf("ReadAt across the end = %d, %v", n, err)
	}
	if n, err := img.ReadAt(p, img.VirtualSize()); n != 0 || err == nil {
		t.Errorf("ReadAt at the end = %d, %v", n, err)
	}
	if _, err := img.Extent(img.VirtualSize()); err == nil {
		t.Error("Extent at the end succeeded")
	}
}
