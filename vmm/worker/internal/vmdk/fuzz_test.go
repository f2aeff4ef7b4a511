package vmdk

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/layer"
)

// FuzzOpen: hostile files never panic, and what opens behaves like a layer.Image.
func FuzzOpen(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if errcode.Of(err) == errcode.Internal {
				t.Fatalf("unnamed error: %v", err)
			}
			return
		}
		checkImage(t, img)
	})
}

func checkImage(t *testing.T, img *Image) {
	size := img.VirtualSize()
	if img.Descriptor().String() != img.DescriptorText() {
		t.Fatal("descriptor does not render back")
	}
	off := int64(0)
	for i := 0; i < 200 && off < size; i++ {
		e, err := img.Extent(off)
		if err != nil {
			if errcode.Of(err) == errcode.Internal {
				t.Fatalf("Extent(%d): unnamed error: %v", off, err)
			}
			return
		}
		if e.Start != off || e.Length <= 0 || e.End() > size || e.End() < e.Start {
			t.Fatalf("Extent(%d) = %+v (size %d)", off, e, size)
		}
		if (e.HostOffset >= 0) != (e.Kind == layer.Data && !e.Compressed) {
			t.Fatalf("Extent(%d) = %+v", off, e)
		}
		p := make([]byte, min(e.Length, 1<<16))
		n, err := img.ReadAt(p, off)
		if err != nil && errcode.Of(err) == errcode.Internal {
			t.Fatalf("ReadAt(%d): unnamed error: %v", off, err)
		}
		if err == nil && n != len(p) {
			t.Fatalf("ReadAt(%d) = %d", off, n)
		}
		if err == nil && e.Kind != layer.Data && !bytes.Equal(p, make([]byte, len(p))) {
			t.Fatalf("%s extent at %d reads non-zero", e.Kind, off)
		}
		off = e.End()
	}
	if n, err := img.ReadAt(make([]byte, 10), size); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt(end) = %d, %v", n, err)
	}
}

// FuzzDescriptor: parsing never panics, renders back exactly, and the CIDs it
// accepts are the ones qemu reads.
func FuzzDescriptor(f *testing.F) {
	f.Fuzz(func(t *testing.T, text []byte) {
		d, err := ParseDescriptor(text)
		if err != nil {
			if errcode.Of(err) != errcode.VmdkBadDescriptor {
				t.Fatalf("unnamed error: %v", err)
			}
			return
		}
		if !bytes.Equal(d.Render(), text) {
			t.Fatalf("Render differs")
		}
		for _, key := range []string{"CID", "parentCID"} {
			v, err := d.cid(key)
			if err != nil {
				continue
			}
			if q, ok := qemuReadCID(string(text), key); !ok || q != v {
				t.Fatalf("%s = %x, qemu reads %x (%v)", key, v, q, ok)
			}
		}
		if name, ok, err := d.ParentFileNameHint(); err == nil && ok {
			// qemu: the text after `parentFileNameHint="` up to the next quote.
			i := strings.Index(string(text), "parentFileNameHint")
			rest := string(text)[i+len("parentFileNameHint")+2:]
			if j := strings.IndexByte(rest, '"'); j < 0 || rest[:j] != name {
				t.Fatalf("hint %q, qemu reads %q", name, rest)
			}
		}
		d.Extents()
		d.DDB()
	})
}

// qemuReadCID models vmdk_read_cid: strstr for key, skip key and one byte, then
// sscanf("%x").
func qemuReadCID(text, key string) (uint32, bool) {
	i := strings.Index(text, key)
	if i < 0 || i+len(key)+1 > len(text) {
		return 0, false
	}
	s := strings.TrimLeft(text[i+len(key)+1:], " \t\n\r\v\f")
	j := 0
	for j < len(s) && j < 16 && strings.IndexByte("0123456789abcdefABCDEF", s[j]) >= 0 {
		j++
	}
	if j == 0 {
		return 0, false
	}
	v, err := strconv.ParseUint(s[:j], 16, 64)
	return uint32(v), err == nil
}

// TestWriteFuzzSeeds regenerates testdata/fuzz when INSTARFS_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("INSTARFS_WRITE_SEEDS") == "" {
		t.Skip("set INSTARFS_WRITE_SEEDS=1 to regenerate the seed corpus")
	}
	small := map[uint64][]byte{0: fill(1, 100), 3: fill(2, 512), 9: fill(3, 16)}
	images := map[string][]byte{
		"sparse":          build(spec{capacity: 16, grain: 1, gtes: 4, grains: small}),
		"sparse-norgd":    build(spec{capacity: 16, grain: 1, gtes: 4, noRGD: true, grains: small}),
		"zeroed":          build(spec{capacity: 16, grain: 1, gtes: 4, zeroed: true, grains: small, zeros: []uint64{1, 2}}),
		"stream":          build(spec{capacity: 16, grain: 1, gtes: 4, compressed: true, grains: small}),
		"stream-nomarker": build(spec{capacity: 16, grain: 1, gtes: 4, compressed: true, noMarkers: true, grains: small}),
		"stream-footer":   build(spec{capacity: 16, grain: 1, gtes: 4, compressed: true, footer: true, grains: small}),
		"odd-size":        build(spec{capacity: 15, grain: 2, gtes: 3, grains: map[uint64][]byte{7: fill(4, 100)}}),
		"descriptor-file": []byte("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"secret.txt\" 0\n"),
	}
	descs := map[string][]byte{
		"qemu":     []byte(qemuDescriptor),
		"stream":   []byte(spec{capacity: 80, compressed: true}.descriptor()),
		"crlf":     []byte("# Disk DescriptorFile\r\nversion=1\r\nCID=1\r\nparentCID=ffffffff\r\ncreateType=\"twoGbMaxExtentSparse\"\r\nRW 4192256 SPARSE \"a-s001.vmdk\"\r\nRDONLY 10 FLAT \"b\" 5\r\nNOACCESS 3 ZERO"),
		"parent":   []byte("CID=a\nparentCID=b\nparentFileNameHint=\"../x y.vmdk\"\n#DDB\nddb.uuid = \"1 2\"\n"),
		"no-final": []byte("version=1\nCID=deadbeef"),
	}
	write := func(target string, seeds map[string][]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("FuzzOpen", images)
	write("FuzzDescriptor", descs)
}
