package qcow2

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/vmm/worker/internal/layer"
)

// rawSource makes a raw image of the given size with compressible patterns
// and zero gaps, for qemu-img convert.
func rawSource(t testing.TB, dir, size string, cmds ...string) string {
	t.Helper()
	p := filepath.Join(dir, "src.raw")
	qemutest.Img(t, "", "create", "-q", "-f", "raw", p, size)
	qemutest.IO(t, p, "raw", cmds...)
	return p
}

var patternWrites = []string{
	"write -P 0x11 0 100k",
	"write -P 0x22 300k 64k",
	"write -P 0x33 1M 1M",
	"write -P 0x44 3M 5k",
}

type imageCase struct {
	name   string
	size   string
	opts   []string // qemu-img create -o options
	io     []string // qemu-io commands on the qcow2 image
	build  func(t *testing.T, dir string) string
	checks func(t *testing.T, img *Image, path string)
	// expect lists extent classes (see extentClass) the image must contain,
	// so that each case provably exercises what it is named after.
	expect []string
}

// extentClass names what an extent is: data, compressed, zero-plain,
// zero-alloc, unallocated; "sub" is appended when it is not a whole number of
// clusters.
func extentClass(img *Image, e layer.Extent) string {
	c := "unallocated"
	switch {
	case e.Kind == layer.Data && e.Compressed:
		c = "compressed"
	case e.Kind == layer.Data:
		c = "data"
	case e.Kind == layer.Zero && e.HostOffset >= 0:
		c = "zero-alloc"
	case e.Kind == layer.Zero:
		c = "zero-plain"
	}
	if (e.Start|e.Length)&(img.ClusterSize()-1) != 0 && e.End() != img.VirtualSize() {
		c += "-sub"
	}
	return c
}

var imageCases = []imageCase{
	{name: "v2-64k", size: "8M", opts: []string{"compat=0.10"}, io: []string{
		"write -P 0x11 0 100k", "write -z 192k 64k", "discard 0 64k", "write -P 0x22 1M 4k",
		"write -P 0x33 2M 64k", "write -z 2M 64k",
	}, expect: []string{"data", "unallocated"}},
	{name: "v3-512", size: "2M", opts: []string{"cluster_size=512"}, io: []string{
		"write -P 1 0 40k", "write -P 2 100k 1k", "write -z 200k 32k", "write -P 3 300k 64k",
		"write -z 310k 1k", "discard 330k 2k", "write -P 4 1535k 2k",
	}, expect: []string{"data", "zero-plain", "zero-alloc", "unallocated"}},
	{name: "v3-4k", size: "16M", opts: []string{"cluster_size=4096"}, io: []string{
		"write -P 1 0 40k", "write -P 2 2M 1k", "write -z 3M 4M", "write -P 3 8M 2M",
		"write -z 9M 4k", "discard 9M 8k", "write -P 4 16380k 4k",
	}},
	{name: "v3-64k-unaligned-size", size: "67109376", io: []string{
		"write -P 5 0 64k", "write -P 6 64M 512", "write -P 7 1M 200k", "write -z 4M 64k",
		"write -P 8 8M 64k", "write -z 8M 64k",
	}},
	{name: "v3-2M", size: "64M", opts: []string{"cluster_size=2M"}, io: []string{
		"write -P 6 1M 3M", "write -z 8M 2M", "write -P 7 20M 64k", "write -z 20M 2M",
		"write -P 8 62M 2M",
	}, expect: []string{"data", "zero-plain", "zero-alloc"}},
	{name: "extl2-64k", size: "8M", opts: []string{"extended_l2=on"}, io: []string{
		"write -P 1 0 4k", "write -z 64k 4k", "write -P 2 128k 64k", "write -z 130k 2k",
		"write -P 3 250k 6k", "write -P 4 1M 128k", "discard 1M 8k", "write -P 5 7M 1M",
	}, expect: []string{"data-sub", "zero-plain-sub", "zero-alloc-sub", "unallocated-sub", "data"}},
	{name: "extl2-16k", size: "4M", opts: []string{"extended_l2=on", "cluster_size=16k"}, io: []string{
		"write -P 1 0 1k", "write -z 16k 512", "write -P 2 32k 16k", "write -z 33k 1k",
		"write -P 3 2M 100k",
	}},
	{name: "extl2-2M", size: "64M", opts: []string{"extended_l2=on", "cluster_size=2M"}, io: []string{
		"write -P 1 0 64k", "write -z 2M 128k", "write -P 2 4M 2M", "write -z 4M 64k",
		"write -P 3 10M 100k",
	}},
	{name: "lazy-refcounts", size: "8M", opts: []string{"lazy_refcounts=on"}, io: []string{
		"write -P 1 0 1M", "write -z 2M 64k", "write -P 2 5M 64k",
	}},
	{name: "refcount-1", size: "8M", opts: []string{"refcount_bits=1"}, io: []string{"write -P 1 0 1M", "write -P 2 4M 64k"}},
	{name: "refcount-8", size: "8M", opts: []string{"refcount_bits=8"}, io: []string{"write -P 1 0 1M", "write -P 2 4M 64k"}},
	{name: "refcount-4", size: "8M", opts: []string{"refcount_bits=4"}, io: []string{"write -P 1 0 1M", "write -P 2 4M 64k"}},
	{name: "refcount-32", size: "8M", opts: []string{"refcount_bits=32"}, io: []string{"write -P 1 0 1M", "write -P 2 4M 64k"}},
	{name: "refcount-64", size: "8M", opts: []string{"refcount_bits=64"}, io: []string{"write -P 1 0 1M", "write -P 2 4M 64k"}},
	{name: "refcount-2-512", size: "1M", opts: []string{"refcount_bits=2", "cluster_size=512"}, io: []string{"write -P 1 0 100k"}},
	{name: "zero-alloc", size: "4M", io: []string{
		"write -P 1 0 256k", "write -z 64k 128k", "write -P 2 1M 64k", "write -z 1M 64k",
	}, expect: []string{"data", "zero-alloc"}},
	{name: "sparse-256M-4k", size: "256M", opts: []string{"cluster_size=4k"}, io: []string{
		"write -P 1 0 64k", "write -P 2 100M 64k", "write -z 150M 1M", "write -P 3 255M 1M",
	}},
	{name: "zlib-io", size: "4M", io: []string{
		"write -c -P 3 0 64k", "write -c -P 4 64k 64k", "write -c -P 5 1M 64k", "write -P 6 1M 4k",
		"write -c -P 7 3M 64k",
	}, expect: []string{"compressed", "data"}},
	{name: "zstd-io", size: "4M", opts: []string{"compression_type=zstd"}, io: []string{
		"write -c -P 3 0 64k", "write -c -P 4 64k 64k", "write -c -P 5 2M 64k", "write -P 6 2M 4k",
		"write -c -P 7 3M 64k",
	}},
	{name: "zlib-convert", build: func(t *testing.T, dir string) string {
		src := rawSource(t, dir, "4M", patternWrites...)
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Img(t, "", "convert", "-c", "-O", "qcow2", src, p)
		return p
	}},
	{name: "zstd-convert", build: func(t *testing.T, dir string) string {
		src := rawSource(t, dir, "4M", patternWrites...)
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Img(t, "", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, p)
		return p
	}, expect: []string{"compressed"}},
	{name: "zlib-convert-512", build: func(t *testing.T, dir string) string {
		src := rawSource(t, dir, "4M", patternWrites...)
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Img(t, "", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=512", src, p)
		return p
	}},
	{name: "zstd-convert-2M", build: func(t *testing.T, dir string) string {
		src := rawSource(t, dir, "8M", patternWrites...)
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Img(t, "", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=2M,compression_type=zstd", src, p)
		return p
	}},
	{name: "zlib-extl2", build: func(t *testing.T, dir string) string {
		src := rawSource(t, dir, "4M", patternWrites...)
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Img(t, "", "convert", "-c", "-O", "qcow2", "-o", "extended_l2=on", src, p)
		qemutest.IO(t, p, "qcow2", "write -P 9 300k 4k", "write -z 1M 2k", "write -P 10 3900k 4k")
		return p
	}, expect: []string{"compressed", "data-sub"}},
	{name: "size-not-sector-aligned", build: func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, p, "qcow2", "1M")
		qemutest.IO(t, p, "qcow2", "write -P 1 960k 64k")
		patchFile(t, p, 24, binary.BigEndian.AppendUint64(nil, 1000000+300))
		return p
	}},
	{name: "snapshot", size: "8M", io: []string{"write -P 1 0 1M"}, build: nil, checks: checkSnapshots},
	{name: "backing", build: func(t *testing.T, dir string) string {
		base := filepath.Join(dir, "base.qcow2")
		qemutest.Create(t, base, "qcow2", "8M")
		qemutest.IO(t, base, "qcow2", "write -P 0x55 0 8M")
		ov := filepath.Join(dir, "ov.qcow2")
		qemutest.Img(t, "", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", ov)
		qemutest.IO(t, ov, "qcow2", "write -P 9 64k 64k", "write -z 256k 64k", "write -P 10 1M 1k")
		return ov
	}, checks: func(t *testing.T, img *Image, path string) {
		h := img.Header()
		if h.BackingFile != "base.qcow2" {
			t.Errorf("BackingFile = %q", h.BackingFile)
		}
		if f, ok := h.BackingFormat(); !ok || f != "qcow2" {
			t.Errorf("BackingFormat = %q, %v", f, ok)
		}
	}},
}

func TestImagesAgainstQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	for _, tc := range imageCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var path string
			if tc.build != nil {
				path = tc.build(t, dir)
			} else {
				path = filepath.Join(dir, "img.qcow2")
				qemutest.Create(t, path, "qcow2", tc.size, tc.opts...)
				qemutest.IO(t, path, "qcow2", tc.io...)
				if tc.name == "snapshot" {
					qemutest.Img(t, "", "snapshot", "-c", "s1", path)
					qemutest.IO(t, path, "qcow2", "write -P 2 512k 1M", "write -z 0 64k")
					qemutest.Img(t, "", "snapshot", "-c", "second", path)
					qemutest.IO(t, path, "qcow2", "write -P 3 4M 64k")
				}
			}
			img := openPath(t, path)
			compareInfo(t, img, path)
			compareContent(t, img, path)
			compareMap(t, img, path)
			if img.Header().NbSnapshots == 0 {
				checkRefcounts(t, img)
			}
			if tc.checks != nil {
				tc.checks(t, img, path)
			}
			seen := map[string]bool{}
			for _, e := range extents(t, img) {
				seen[extentClass(img, e)] = true
			}
			for _, c := range tc.expect {
				if !seen[c] {
					t.Errorf("no %s extent; have %v", c, seen)
				}
			}
		})
	}
}

// compareInfo checks header-derived values against qemu-img info.
func compareInfo(t *testing.T, img *Image, path string) {
	t.Helper()
	in := qemuInfo(t, path)
	h := img.Header()
	d := in.FormatSpecific.Data
	compat := map[uint32]string{2: "0.10", 3: "1.1"}[h.Version]
	ctype := map[uint8]string{0: "zlib", 1: "zstd"}[h.CompressionType]
	if h.Version == 2 {
		ctype = d.CompressionType // v2 info has no compression type
	}
	bf, _ := h.BackingFormat()
	got := []any{img.VirtualSize(), img.ClusterSize(), h.BackingFile, bf, compat, ctype, h.LazyRefcounts(), h.RefcountBits(), h.Corrupt(), h.ExtendedL2()}
	want := []any{in.VirtualSize, in.ClusterSize, in.BackingFilename, in.BackingFormat, d.Compat, d.CompressionType, d.LazyRefcounts, d.RefcountBits, d.Corrupt, d.ExtendedL2}
	names := []string{"virtual size", "cluster size", "backing file", "backing format", "compat", "compression type", "lazy refcounts", "refcount bits", "corrupt", "extended L2"}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s = %v, qemu-img info says %v", names[i], got[i], want[i])
		}
	}
}

func checkSnapshots(t *testing.T, img *Image, path string) {
	in := qemuInfo(t, path)
	snaps, err := img.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != len(in.Snapshots) || len(snaps) != 2 {
		t.Fatalf("%d snapshots, qemu-img info lists %d", len(snaps), len(in.Snapshots))
	}
	for i, s := range snaps {
		q := in.Snapshots[i]
		if s.ID != q.ID || s.Name != q.Name || s.VMStateSize != q.VMStateSize || s.DateSec != q.DateSec ||
			s.DateNsec != q.DateNsec || s.VMClockNsec != q.VMClockSec*1e9+q.VMClockNsec {
			t.Errorf("snapshot %d = %+v, qemu-img info %+v", i, s, q)
		}
		if q.Icount != nil && (!s.HasIcount || int64(s.Icount) != *q.Icount) {
			t.Errorf("snapshot %d icount = %d (%v), qemu %d", i, int64(s.Icount), s.HasIcount, *q.Icount)
		}
		if !s.HasDiskSize || s.DiskSize != uint64(img.VirtualSize()) {
			t.Errorf("snapshot %d disk size = %d (%v)", i, s.DiskSize, s.HasDiskSize)
		}
		if s.L1Size != img.Header().L1Size || s.L1TableOffset == 0 || s.L1TableOffset == img.Header().L1TableOffset {
			t.Errorf("snapshot %d L1 = %d entries at %#x", i, s.L1Size, s.L1TableOffset)
		}
		if l1, err := img.ReadL1Table(s.L1TableOffset, s.L1Size); err != nil || len(l1) != int(s.L1Size) || l1[0]&L1OffsetMask == 0 {
			t.Errorf("snapshot %d: ReadL1Table = %#x, %v", i, l1, err)
		}
		if s.EntrySize%8 != 0 || s.EntrySize < snapshotFixedSize {
			t.Errorf("snapshot %d entry size %d", i, s.EntrySize)
		}
	}
	if snaps[0].Name != "s1" || snaps[1].Name != "second" {
		t.Errorf("names %q %q", snaps[0].Name, snaps[1].Name)
	}
}

// patchFile overwrites bytes of the file at path.
func patchFile(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
