package qcow2

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

// FuzzOpen opens arbitrary bytes as a qcow2 image and exercises the reader:
// it must never panic, every error must carry a named code, and extents must
// tile the virtual size. Seeds in testdata/fuzz/FuzzOpen are small images made
// by qemu-img (regenerate with QCOW2_WRITE_FUZZ_SEEDS=1 go test -run
// TestWriteFuzzSeeds). With slow inputs the default minimisation time makes
// progress look stalled; -fuzzminimizetime=2s keeps it moving.
func FuzzOpen(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		named := func(what string, err error) {
			if err != nil && errcode.Of(err) == errcode.Internal {
				t.Fatalf("%s: error without a code: %v", what, err)
			}
		}
		img, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			named("Open", err)
			return
		}
		h := img.Header()
		h.FeatureNames()
		_, _, err = h.Bitmaps()
		named("Bitmaps", err)
		buf := make([]byte, 64<<10)
		size := img.VirtualSize()
		off := int64(0)
		for steps := 0; steps < 256 && off < size; steps++ {
			e, err := img.Extent(off)
			if err != nil {
				named("Extent", err)
				break
			}
			if e.Start != off || e.Length <= 0 || e.End() > size {
				t.Fatalf("Extent(%d) = %+v (virtual size %d)", off, e, size)
			}
			n := min(e.Length, int64(len(buf)))
			if _, err := img.ReadAt(buf[:n], off); err != nil {
				named("ReadAt", err)
			}
			off = e.End()
		}
		_, err = img.Snapshots()
		named("Snapshots", err)
		rt, err := img.RefcountTable()
		named("RefcountTable", err)
		for i, found := 0, 0; i < len(rt) && found < 4; i++ {
			if o := rt[i] & RefcountTableOffsetMask; o != 0 {
				found++
				if b, err := img.ReadRefcountBlock(int64(o)); err != nil {
					named("ReadRefcountBlock", err)
				} else {
					for j := 0; j < b.Len(); j += 97 {
						b.Get(j)
					}
				}
			}
		}
		for i, found := 0, 0; i < len(img.L1()) && found < 4; i++ {
			if o := img.L1()[i] & L1OffsetMask; o != 0 {
				found++
				tb, err := img.ReadL2Table(int64(o))
				if err != nil {
					named("ReadL2Table", err)
					continue
				}
				for j := 0; j < tb.Len(); j++ {
					e := tb.Entry(j)
					e.Subcluster(j)
					if e.Type == ClusterCompressed && j%8 == 0 {
						_, err := img.ReadCompressedCluster(e, 0)
						named("ReadCompressedCluster", err)
					}
				}
			}
		}
	})
}

// TestWriteFuzzSeeds regenerates the FuzzOpen seed corpus from small images
// made by qemu-img. It only runs when QCOW2_WRITE_FUZZ_SEEDS is set.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("QCOW2_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set QCOW2_WRITE_FUZZ_SEEDS=1 to regenerate the seed corpus")
	}
	qemutest.NeedQemu(t)
	out := filepath.Join("testdata", "fuzz", "FuzzOpen")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	seeds := []struct {
		name string
		opts []string
		io   []string
		post func(t *testing.T, p string)
	}{
		{"v2-512", []string{"compat=0.10", "cluster_size=512"}, []string{"write -P 1 0 2k", "write -P 2 40k 1k"}, nil},
		{"v3-512", []string{"cluster_size=512"}, []string{"write -P 1 0 2k", "write -z 4k 1k", "write -c -P 2 40k 512", "write -z 0 512"}, nil},
		{"zstd-512", []string{"cluster_size=512", "compression_type=zstd"}, []string{"write -c -P 1 0 1k", "write -P 2 8k 512"}, nil},
		{"extl2-16k", []string{"cluster_size=16k", "extended_l2=on"}, []string{"write -P 1 0 1k", "write -z 2k 512"}, nil},
		{"refcount1-512", []string{"cluster_size=512", "refcount_bits=1"}, []string{"write -P 1 0 1k"}, nil},
		{"snapshot-512", []string{"cluster_size=512"}, []string{"write -P 1 0 1k"}, func(t *testing.T, p string) {
			qemutest.Img(t, "", "snapshot", "-c", "s1", p)
		}},
		{"backing-512", []string{"cluster_size=512", "backing_file=base.qcow2", "backing_fmt=qcow2"}, []string{"write -P 1 0 1k"}, nil},
	}
	for _, s := range seeds {
		dir := t.TempDir()
		base := filepath.Join(dir, "base.qcow2")
		qemutest.Create(t, base, "qcow2", "64k", "cluster_size=512")
		p := filepath.Join(dir, "img.qcow2")
		qemutest.Create(t, p, "qcow2", "64k", s.opts...)
		qemutest.IO(t, p, "qcow2", s.io...)
		if s.post != nil {
			s.post(t, p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := exercise(b); err != nil {
			t.Fatalf("seed %s: %v", s.name, err)
		}
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(out, s.name), []byte(seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
