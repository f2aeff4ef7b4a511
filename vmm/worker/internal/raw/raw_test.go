package raw

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/internal/qemutest"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
)

// mbr returns a sector with the signature and the given entries.
func mbr(entries ...mbrEntry) []byte {
	b := make([]byte, 512)
	for i, e := range entries {
		p := b[mbrTable+16*i:]
		p[0], p[4] = e.status, e.typ
		binary.LittleEndian.PutUint32(p[8:], e.start)
		binary.LittleEndian.PutUint32(p[12:], e.count)
	}
	b[510], b[511] = 0x55, 0xaa
	return b
}

// gpt returns a protective MBR followed by a GPT header at LBA 1 for the given
// sector size, padded to DetectBytes.
func gpt(ss int) []byte {
	b := make([]byte, DetectBytes)
	copy(b, mbr(mbrEntry{typ: typeProtected, start: 1, count: 0xffffffff}))
	h := b[ss:]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x00010000)
	binary.LittleEndian.PutUint32(h[12:], gptHeaderMin)
	binary.LittleEndian.PutUint64(h[24:], 1)       // MyLBA
	binary.LittleEndian.PutUint64(h[32:], 2097151) // AlternateLBA
	binary.LittleEndian.PutUint64(h[40:], 34)      // FirstUsableLBA
	binary.LittleEndian.PutUint64(h[48:], 2097118) // LastUsableLBA
	copy(h[56:72], "0123456789abcdef")             // DiskGUID
	binary.LittleEndian.PutUint64(h[72:], 2)       // PartitionEntryLBA
	binary.LittleEndian.PutUint32(h[80:], 128)
	binary.LittleEndian.PutUint32(h[84:], 128)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:gptHeaderMin]))
	return b
}

func TestDetect(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	random := make([]byte, DetectBytes)
	rng.Read(random)
	randomSig := bytes.Clone(random) // boot code and signature, garbage table
	randomSig[510], randomSig[511] = 0x55, 0xaa

	linux := mbrEntry{status: 0x80, typ: 0x83, start: 2048, count: 204800}
	swap := mbrEntry{typ: 0x82, start: 206848, count: 4096}
	badCRC := gpt(512)
	badCRC[512+16] ^= 1
	badLBA := gpt(512)
	binary.LittleEndian.PutUint64(badLBA[512+24:], 2)
	binary.LittleEndian.PutUint32(badLBA[512+16:], 0)
	binary.LittleEndian.PutUint32(badLBA[512+16:], crc32.ChecksumIEEE(badLBA[512:512+gptHeaderMin]))
	hugeHeader := gpt(512)
	binary.LittleEndian.PutUint32(hugeHeader[512+12:], 1<<31)

	for _, tc := range []struct {
		name  string
		first []byte
		want  Table
	}{
		{"empty", nil, NoTable},
		{"all zero", make([]byte, DetectBytes), NoTable},
		{"random", random, NoTable},
		{"random with signature", randomSig, NoTable},
		{"signature only", mbr(), NoTable},
		{"one partition", mbr(linux), MBR},
		{"two partitions", mbr(linux, swap), MBR},
		{"gap in table", mbr(mbrEntry{}, linux), MBR},
		{"short but whole sector", mbr(linux)[:512], MBR},
		{"truncated sector", mbr(linux)[:511], NoTable},
		{"bad status", mbr(mbrEntry{status: 0x12, typ: 0x83, start: 1, count: 1}), NoTable},
		{"empty entry with data", mbr(linux, mbrEntry{start: 5}), NoTable},
		{"zero length", mbr(mbrEntry{typ: 0x83, start: 2048}), NoTable},
		{"starts at sector 0", mbr(mbrEntry{typ: 0x83, count: 10}), NoTable},
		{"overlap", mbr(linux, mbrEntry{typ: 0x83, start: 4096, count: 10}), NoTable},
		{"gpt 512", gpt(512), GPT},
		{"gpt 4096", gpt(4096), GPT},
		{"gpt bad crc", badCRC, NoTable},
		{"gpt bad MyLBA", badLBA, NoTable},
		{"gpt header size absurd", hugeHeader, NoTable},
		{"gpt without header bytes", gpt(512)[:600], NoTable},
		{"protective mbr only", mbr(mbrEntry{typ: typeProtected, start: 1, count: 100}), NoTable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DetectTable(tc.first); got != tc.want {
				t.Errorf("DetectTable = %v, want %v", got, tc.want)
			}
			if Detect(tc.first) != (tc.want != NoTable) {
				t.Errorf("Detect disagrees")
			}
		})
	}
}

// TestDetectSfdisk uses sfdisk when it is installed.
func TestDetectSfdisk(t *testing.T) {
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Skip("sfdisk not installed")
	}
	for _, label := range []string{"dos", "gpt"} {
		t.Run(label, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.raw")
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(64 << 20); err != nil {
				t.Fatal(err)
			}
			f.Close()
			cmd := exec.Command("sfdisk", "-q", path)
			cmd.Stdin = bytes.NewBufferString("label: " + label + "\n,32M,L\n,,S\n")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("sfdisk: %v\n%s", err, out)
			}
			b, _ := os.ReadFile(path)
			want := map[string]Table{"dos": MBR, "gpt": GPT}[label]
			if got := DetectTable(b[:DetectBytes]); got != want {
				t.Errorf("DetectTable = %v", got)
			}
		})
	}
}

func TestReadAt(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000) // 10000 bytes
	img := Open(bytes.NewReader(data), int64(len(data)))
	if img.VirtualSize() != 10240 {
		t.Fatalf("VirtualSize %d", img.VirtualSize())
	}
	p := make([]byte, 400)
	n, err := img.ReadAt(p, 9900)
	if n != 340 || err == nil || !bytes.Equal(p[:100], data[9900:]) || !bytes.Equal(p[100:340], make([]byte, 240)) {
		t.Errorf("ReadAt across the end = %d, %v", n, err)
	}
	if n, err := img.ReadAt(p, 10240); n != 0 || err == nil {
		t.Errorf("ReadAt(end) = %d, %v", n, err)
	}
	for _, tc := range []struct {
		off  int64
		want layer.Extent
	}{
		{0, layer.Extent{Start: 0, Length: 10000, Kind: layer.Data, HostOffset: 0}},
		{123, layer.Extent{Start: 123, Length: 9877, Kind: layer.Data, HostOffset: 123}},
		{10000, layer.Extent{Start: 10000, Length: 240, Kind: layer.Zero, HostOffset: 10000}},
	} {
		if e, err := img.Extent(tc.off); err != nil || e != tc.want {
			t.Errorf("Extent(%d) = %+v, %v", tc.off, e, err)
		}
	}
	if _, err := img.Extent(10240); err == nil {
		t.Error("Extent(end) succeeded")
	}
	// A short file is a read error, not zeros.
	short := Open(bytes.NewReader(data[:100]), 1000)
	if _, err := short.ReadAt(make([]byte, 500), 0); err == nil {
		t.Error("reading past a shrunk file succeeded")
	}
}

// seekHoles is SEEK_DATA/SEEK_HOLE on a file, as the worker does it.
type seekHoles struct{ f *os.File }

func (h seekHoles) Status(off, n int64) (bool, int64, error) {
	fd := int(h.f.Fd())
	data, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false, n, nil
	}
	if err != nil {
		return false, 0, err
	}
	if data > off {
		return false, min(n, data-off), nil
	}
	hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil {
		return false, 0, err
	}
	return true, min(n, hole-off), nil
}

// TestHolesOracle: with a HoleFinder, Extent matches qemu-img map of sparse raw
// files, and content matches the file.
func TestHolesOracle(t *testing.T) {
	qemutest.NeedQemu(t)
	rng := rand.New(rand.NewSource(1))
	type write struct{ off, n int64 }
	for _, tc := range []struct {
		name   string
		size   int64
		writes []write
	}{
		{"holes", 10 << 20, []write{{196608, 131072}, {4096000, 4096}, {10<<20 - 100, 1}}},
		{"all hole odd size", 10001, nil},
		{"data to odd end", 10001, []write{{0, 10001}}},
		{"hole to odd end", 10001, []write{{0, 5000}}},
		{"data in the middle", 9000, []write{{8990, 10}}},
		{"all data", 256 << 10, []write{{0, 256 << 10}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "r.raw")
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(tc.size); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.writes {
				b := make([]byte, w.n)
				rng.Read(b)
				if _, err := f.WriteAt(b, w.off); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			want := qemutest.Map(t, path, "raw")
			img := OpenWithHoles(f, tc.size, seekHoles{f})
			var got []proto.MapEntry
			for off := int64(0); off < img.VirtualSize(); {
				e, err := img.Extent(off)
				if err != nil {
					t.Fatal(err)
				}
				o := e.HostOffset
				me := proto.MapEntry{Start: e.Start, Length: e.Length, Present: true, Zero: e.Kind == layer.Zero, Data: e.Kind == layer.Data, Offset: &o}
				if n := len(got); n > 0 && got[n-1].Zero == me.Zero && *got[n-1].Offset+got[n-1].Length == o {
					got[n-1].Length += e.Length
				} else {
					got = append(got, me)
				}
				off = e.End()
			}
			if a, b := dump(got), dump(want); a != b {
				t.Errorf("map differs\nours %s\nqemu %s", a, b)
			}
			content, _ := os.ReadFile(path)
			content = append(content, make([]byte, img.VirtualSize()-tc.size)...)
			buf := make([]byte, img.VirtualSize())
			if n, err := img.ReadAt(buf, 0); n != len(buf) || err != nil || !bytes.Equal(buf, content) {
				t.Errorf("ReadAt = %d, %v", n, err)
			}
		})
	}
}

func dump(m []proto.MapEntry) string {
	b, _ := json.Marshal(m)
	return string(b)
}

func FuzzDetect(f *testing.F) {
	f.Add(mbr(mbrEntry{status: 0x80, typ: 0x83, start: 2048, count: 2048}))
	f.Add(gpt(512))
	f.Add(gpt(4096))
	f.Fuzz(func(t *testing.T, b []byte) {
		DetectTable(b)
	})
}
