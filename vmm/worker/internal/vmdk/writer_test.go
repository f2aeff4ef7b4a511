package vmdk

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"instarfs/errcode"
)

// memFile is an in-memory image file for the Writer.
type memFile struct {
	b      []byte
	writes int
	syncs  int
}

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, errcode.New(errcode.ReadFailed, "EOF")
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, errcode.New(errcode.ReadFailed, "EOF")
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	m.writes++
	return copy(m.b[off:], p), nil
}

func (m *memFile) Datasync() error { m.syncs++; return nil }

func openMem(t *testing.T, m *memFile) *Image {
	t.Helper()
	img, err := Open(bytes.NewReader(m.b), int64(len(m.b)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return img
}

func readImage(t *testing.T, img *Image) []byte {
	t.Helper()
	b := make([]byte, img.VirtualSize())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

const qemuDesc = "# Disk DescriptorFile\nversion=1\nCID=aeaf814f\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\n# Extent description\nRW 131072 SPARSE \"ov.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n"

func TestDescriptorSetters(t *testing.T) {
	withParent := strings.Replace(qemuDesc, "parentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\n",
		"parentCID=a8c04d02\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\n", 1)
	tests := []struct {
		name string
		in   string
		edit func(*Descriptor) error
		want string
	}{
		{"attach a parent (qemu template)", qemuDesc, func(d *Descriptor) error {
			if err := d.SetParentCID(0xa8c04d02); err != nil {
				return err
			}
			return d.SetParentFileNameHint("base.vmdk", true)
		}, withParent},
		{"detach (blank line back)", withParent, func(d *Descriptor) error {
			if err := d.SetParentCID(NoParentCID); err != nil {
				return err
			}
			return d.SetParentFileNameHint("", false)
		}, qemuDesc},
		{"rename the parent", withParent, func(d *Descriptor) error { return d.SetParentFileNameHint("sub/new.vmdk", true) },
			strings.Replace(withParent, "base.vmdk", "sub/new.vmdk", 1)},
		{"CID is lowercase hex, not padded", qemuDesc, func(d *Descriptor) error { return d.SetCID(0xabc) },
			strings.Replace(qemuDesc, "CID=aeaf814f", "CID=abc", 1)},
		{"parentCID inserted after CID", strings.Replace(qemuDesc, "parentCID=ffffffff\n", "", 1),
			func(d *Descriptor) error { return d.SetParentCID(0x12) }, strings.Replace(qemuDesc, "parentCID=ffffffff", "parentCID=12", 1)},
		{"hint inserted without a blank line", strings.Replace(qemuDesc, "\"\n\n# Extent", "\"\n# Extent", 1),
			func(d *Descriptor) error { return d.SetParentFileNameHint("b.vmdk", true) },
			strings.Replace(qemuDesc, "\"\n\n# Extent", "\"\nparentFileNameHint=\"b.vmdk\"\n# Extent", 1)},
		{"CRLF kept", strings.ReplaceAll(withParent, "\n", "\r\n"), func(d *Descriptor) error { return d.SetParentCID(1) },
			strings.ReplaceAll(strings.Replace(withParent, "parentCID=a8c04d02", "parentCID=1", 1), "\n", "\r\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ParseDescriptor([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.edit(d); err != nil {
				t.Fatal(err)
			}
			if got := d.String(); got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
			if _, err := d.EncodeEmbedded(20 * SectorSize); err != nil {
				t.Errorf("EncodeEmbedded: %v", err)
			}
		})
	}
}

func TestDescriptorRefusals(t *testing.T) {
	d, _ := ParseDescriptor([]byte(qemuDesc))
	for _, name := range []string{`a"b`, "a\nb", strings.Repeat("x", 1024)} {
		if err := d.Clone().SetParentFileNameHint(name, true); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := d.EncodeEmbedded(int64(len(qemuDesc))); errcode.Of(err) != errcode.VmdkDescriptorTooLarge {
		t.Errorf("descriptor without room for its NUL: %v", err)
	}
	noCID, _ := ParseDescriptor([]byte("# Disk DescriptorFile\nversion=1\n"))
	if err := noCID.SetCID(1); err == nil {
		t.Error("SetCID without a CID line succeeded")
	}
}

func TestWriter(t *testing.T) {
	const grain = 8 // sectors: 4 KiB grains
	gb := grain * SectorSize
	base := spec{capacity: 64 * grain, grain: grain, gtes: 16, grains: map[uint64][]byte{1: fill(1, gb), 20: fill(2, gb)}}
	tests := []struct {
		name   string
		spec   spec
		dropGD bool // clear grain directory entry 1 in both directories
		ops    func(w *Writer) error
		want   func(b []byte) // applies the expected change to the content
	}{
		{
			name: "overwrite in place and allocate",
			spec: base,
			ops: func(w *Writer) error {
				if err := w.WriteData(int64(gb)+10, fill(9, 100)); err != nil {
					return err
				}
				return w.WriteData(5*int64(gb), fill(7, 3*gb))
			},
			want: func(b []byte) { copy(b[gb+10:], fill(9, 100)); copy(b[5*gb:], fill(7, 3*gb)) },
		},
		{
			name:   "grain table allocated in both directories",
			spec:   base,
			dropGD: true,
			ops:    func(w *Writer) error { return w.WriteData(17*int64(gb)+1, fill(5, 10)) },
			want:   func(b []byte) { clear(b[16*gb : 32*gb]); copy(b[17*gb+1:], fill(5, 10)) },
		},
		{
			name: "zeroes without the zeroed-grain flag write data",
			spec: base,
			ops:  func(w *Writer) error { return w.WriteZeroes(int64(gb), int64(gb), 0) },
			want: func(b []byte) { clear(b[gb : 2*gb]) },
		},
		{
			name: "zeroed grains",
			spec: spec{capacity: 64 * grain, grain: grain, gtes: 16, zeroed: true, grains: base.grains},
			ops: func(w *Writer) error {
				if err := w.WriteZeroes(int64(gb), 2*int64(gb), 0); err != nil {
					return err
				}
				return w.WriteZeroes(20*int64(gb)+512, 512, 0)
			},
			want: func(b []byte) { clear(b[gb : 3*gb]); clear(b[20*gb+512 : 20*gb+1024]) },
		},
		{
			name: "discard whole grains only",
			spec: base,
			ops:  func(w *Writer) error { return w.Discard(int64(gb)/2, 20*int64(gb)) },
			want: func(b []byte) { clear(b[gb : 2*gb]) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &memFile{b: build(tt.spec)}
			if tt.dropGD {
				img := openMem(t, m)
				for _, off := range []int64{img.GDOffset(), img.RGDOffset()} {
					binary.LittleEndian.PutUint32(m.b[off+4:], 0)
				}
			}
			before := openMem(t, m)
			want := readImage(t, before)
			w, err := NewWriter(before, m)
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.ops(w); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			tt.want(want)
			after := openMem(t, m)
			if got := readImage(t, after); !bytes.Equal(got, want) {
				t.Errorf("content differs after writing")
			}
			if gd, rgd := after.GD(), after.RGD(); rgd != nil && len(gd) == len(rgd) {
				for i := range gd {
					a, _ := after.GrainTable(i)
					r := readGT(t, m.b, rgd[i], len(a))
					if !slices.Equal(a, r) {
						t.Errorf("grain table %d differs between the directories: %v vs %v", i, a, r)
					}
				}
			}
		})
	}
}

func readGT(t *testing.T, b []byte, sector uint32, n int) []uint32 {
	if sector == 0 {
		return nil
	}
	out := make([]uint32, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(b[int(sector)*SectorSize+4*i:])
	}
	return out
}

func TestWriterRefusesStreamOptimized(t *testing.T) {
	m := &memFile{b: build(spec{capacity: 64, grain: 8, gtes: 16, compressed: true, grains: map[uint64][]byte{0: fill(1, 100)}})}
	if _, err := NewWriter(openMem(t, m), m); errcode.Of(err) != errcode.VmdkReadOnly {
		t.Errorf("NewWriter on a streamOptimized image: %v", err)
	}
}

func TestWriterEmpty(t *testing.T) {
	m := &memFile{b: build(spec{capacity: 64 * 8, grain: 8, gtes: 16, grains: map[uint64][]byte{1: fill(1, 4096), 20: fill(2, 4096)}})}
	img := openMem(t, m)
	w, err := NewWriter(img, m)
	if err != nil {
		t.Fatal(err)
	}
	freed, n, err := w.Empty()
	if err != nil || n != 2 || len(freed) != 2 {
		t.Fatalf("Empty: %v, %d cleared, freed %v", err, n, freed)
	}
	if got := readImage(t, openMem(t, m)); !bytes.Equal(got, make([]byte, len(got))) {
		t.Error("emptied image does not read as zeros")
	}
}

// FuzzWriter opens arbitrary bytes as a vmdk and, when they open, writes,
// zeroes, discards, edits the descriptor and empties through a Writer: it must
// fail with a named error or succeed, never panic.
func FuzzWriter(f *testing.F) {
	f.Add(build(spec{capacity: 64 * 8, grain: 8, gtes: 16, grains: map[uint64][]byte{1: fill(1, 4096)}}), uint16(3), uint16(5000))
	f.Add(build(spec{capacity: 64 * 8, grain: 8, gtes: 16, zeroed: true, noRGD: true, zeros: []uint64{2}}), uint16(0), uint16(60000))
	f.Fuzz(func(t *testing.T, b []byte, a, n uint16) {
		m := &memFile{b: bytes.Clone(b)}
		img, err := Open(bytes.NewReader(m.b), int64(len(m.b)))
		if err != nil {
			return
		}
		w, err := NewWriter(img, m)
		if err != nil {
			return
		}
		size := img.VirtualSize()
		off := int64(a) * 512 % max(size, 1)
		ln := min(int64(n), size-off)
		w.WriteData(off, make([]byte, ln))
		w.WriteZeroes(off, ln, 0)
		w.Discard(0, size)
		w.UpdateDescriptor(func(d *Descriptor) error { return d.SetParentFileNameHint("p.vmdk", true) })
		w.Flush()
		w.Empty()
	})
}
