package qcow2

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"instarfs/internal/qemutest"
)

// BenchmarkReadAt reads a 256 MiB image (all data, or one cluster in two
// written) sequentially in 1 MiB reads.
func BenchmarkReadAt(b *testing.B) {
	qemutest.NeedQemu(b)
	for _, bc := range []struct {
		name string
		opts []string
		io   []string
	}{
		{"full-64k", nil, []string{"write -P 1 0 256M"}},
		{"full-extl2", []string{"extended_l2=on"}, []string{"write -P 1 0 256M"}},
		{"sparse-64k", nil, []string{"write -P 1 0 64M", "write -z 64M 64M"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := filepath.Join(b.TempDir(), "img.qcow2")
			qemutest.Create(b, p, "qcow2", "256M", bc.opts...)
			qemutest.IO(b, p, "qcow2", bc.io...)
			img := openPath(b, p)
			buf := make([]byte, 1<<20)
			b.SetBytes(img.VirtualSize())
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for off := int64(0); off < img.VirtualSize(); off += int64(len(buf)) {
					if _, err := img.ReadAt(buf, off); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkExtents walks the extents of a 2 GiB image with scattered data.
func BenchmarkExtents(b *testing.B) {
	qemutest.NeedQemu(b)
	for _, bc := range []struct {
		name string
		opts []string
	}{{"64k", nil}, {"extl2", []string{"extended_l2=on"}}} {
		b.Run(bc.name, func(b *testing.B) {
			p := filepath.Join(b.TempDir(), "img.qcow2")
			qemutest.Create(b, p, "qcow2", "2G", bc.opts...)
			var cmds []string
			for off := 0; off < 2048; off += 3 {
				cmds = append(cmds, "write -P 1 "+strconv.Itoa(off)+"M 64k")
			}
			qemutest.IO(b, p, "qcow2", cmds...)
			img := openPath(b, p)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for off := int64(0); off < img.VirtualSize(); {
					e, err := img.Extent(off)
					if err != nil {
						b.Fatal(err)
					}
					off = e.End()
				}
			}
		})
	}
}

// BenchmarkReadCompressed reads a 16 MiB image whose every cluster qemu-img
// compressed (zlib, then zstd) sequentially in 1 MiB reads. The content is
// text-like, about 3:1 compressible, with a few random bytes in every line.
func BenchmarkReadCompressed(b *testing.B) {
	qemutest.NeedQemu(b)
	dir := b.TempDir()
	raw := filepath.Join(dir, "content.raw")
	words := []string{"qcow2 ", "cluster ", "refcount ", "backing ", "the ", "of ", "an ", "image "}
	const size = 16 << 20
	content := make([]byte, 0, size+16)
	x := uint64(0x9e3779b97f4a7c15)
	for len(content) < size {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		if x%8 == 0 {
			content = append(content, byte(x>>8), byte(x>>16), '\n')
		} else {
			content = append(content, words[x%uint64(len(words))]...)
		}
	}
	if err := os.WriteFile(raw, content[:size], 0o644); err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"zlib", "zstd"} {
		b.Run(kind, func(b *testing.B) {
			p := filepath.Join(dir, kind+".qcow2")
			qemutest.Img(b, dir, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type="+kind, raw, p)
			img := openPath(b, p)
			buf := make([]byte, 1<<20)
			b.SetBytes(img.VirtualSize())
			for b.Loop() {
				for off := int64(0); off < img.VirtualSize(); off += int64(len(buf)) {
					if _, err := img.ReadAt(buf, off); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
