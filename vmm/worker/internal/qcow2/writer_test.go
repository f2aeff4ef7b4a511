package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
	"instarfs/vmm/worker/internal/layer"
)

// osFile adapts *os.File to File.
type osFile struct{ *os.File }

func (f osFile) Datasync() error { return unix.Fdatasync(int(f.Fd())) }

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// unsafeRebase rewrites cluster 0 of path with our header encoder.
func unsafeRebase(t testing.TB, path, name, format string) error {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	w, err := NewWriter(osFile{f}, st.Size())
	if err != nil {
		return err
	}
	if err := w.SetBacking(name, format); err != nil {
		return err
	}
	return w.Finish()
}

func TestEncodeCluster0MatchesQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemutest.Create(t, base, "qcow2", "64M")
	long := func(n int) string { return strings.Repeat("n", n-len(".qcow2")) + ".qcow2" }
	tests := []struct {
		name    string
		opts    []string
		backed  bool // created with base.qcow2 as backing
		newName string
		newFmt  string
		code    errcode.Code // expected error
	}{
		{name: "v3-64k-change", backed: true, newName: "new-base.qcow2", newFmt: "qcow2"},
		{name: "v3-64k-add", newName: "base.qcow2", newFmt: "qcow2"},
		{name: "v3-64k-detach", backed: true, newName: ""},
		{name: "v3-64k-raw", backed: true, newName: "base.img", newFmt: "raw"},
		{name: "v2-64k-change", opts: []string{"compat=0.10"}, backed: true, newName: "other.qcow2", newFmt: "qcow2"},
		{name: "v2-64k-detach", opts: []string{"compat=0.10"}, backed: true},
		{name: "v2-512-add", opts: []string{"compat=0.10", "cluster_size=512"}, newName: "b.qcow2", newFmt: "qcow2"},
		{name: "v3-512", opts: []string{"cluster_size=512"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-1k", opts: []string{"cluster_size=1024"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-4k", opts: []string{"cluster_size=4096"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-8k", opts: []string{"cluster_size=8192"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-2M", opts: []string{"cluster_size=2M"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-extl2", opts: []string{"extended_l2=on"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-lazy", opts: []string{"lazy_refcounts=on"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-zstd", opts: []string{"compression_type=zstd"}, backed: true, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-refbits1", opts: []string{"refcount_bits=1"}, newName: "x.qcow2", newFmt: "qcow2"},
		{name: "v3-512-max", opts: []string{"cluster_size=512"}, newName: long(376), newFmt: "qcow2"},
		{name: "v3-512-over", opts: []string{"cluster_size=512"}, newName: long(377), newFmt: "qcow2", code: errcode.BackingNameNoRoom},
		{name: "v3-1k-max", opts: []string{"cluster_size=1024"}, newName: long(888), newFmt: "qcow2"},
		{name: "v3-1k-over", opts: []string{"cluster_size=1024"}, newName: long(889), newFmt: "qcow2", code: errcode.BackingNameNoRoom},
		{name: "v3-2k-max", opts: []string{"cluster_size=2048"}, newName: long(1023), newFmt: "qcow2"},
		{name: "v3-2k-over", opts: []string{"cluster_size=2048"}, newName: long(1024), newFmt: "qcow2", code: errcode.BackingNameTooLong},
		{name: "v2-512-max", opts: []string{"compat=0.10", "cluster_size=512"}, newName: long(416), newFmt: "qcow2"},
		{name: "v2-512-over", opts: []string{"compat=0.10", "cluster_size=512"}, newName: long(417), newFmt: "qcow2", code: errcode.BackingNameNoRoom},
		{name: "v3-64k-max", backed: true, newName: long(1023), newFmt: "qcow2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := filepath.Join(dir, tc.name+"-qemu.qcow2")
			ours := filepath.Join(dir, tc.name+"-ours.qcow2")
			opts := tc.opts
			if tc.backed {
				opts = append(opts, "backing_file=base.qcow2", "backing_fmt=qcow2")
			}
			qemutest.Create(t, q, "qcow2", "64M", opts...)
			copyFile(t, q, ours)
			err := unsafeRebase(t, ours, tc.newName, tc.newFmt)
			if tc.code != "" {
				if errcode.Of(err) != tc.code {
					t.Fatalf("error %v, want %s", err, tc.code)
				}
				qemutest.SameBytes(t, q, ours) // untouched
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			args := []string{"rebase", "-u", "-b", tc.newName}
			if tc.newFmt != "" {
				args = append(args, "-F", tc.newFmt)
			}
			qemutest.Each(t, func(t *testing.T, o qemutest.Oracle) {
				theirs := filepath.Join(t.TempDir(), filepath.Base(q))
				copyFile(t, q, theirs)
				o.Img(t, "", append(args, theirs)...)
				qemutest.SameBytes(t, theirs, ours)
			})
		})
	}
}

// craft rewrites cluster 0 of a 64 KiB-cluster v3 image: header_length hl
// (with unknown header fields of 0x5a bytes past 112), then the extensions
// deadbeef "hello", backing format "qcow2", 0badf00d (empty), the end marker
// and the backing name.
func craft(t testing.TB, path string, hl int, name string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c0 := make([]byte, 65536)
	if _, err := f.ReadAt(c0, 0); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 65536)
	copy(out, c0[:104])
	for i := 112; i < hl; i++ {
		out[i] = 0x5a
	}
	binary.BigEndian.PutUint32(out[100:], uint32(hl))
	off := hl
	ext := func(magic uint32, data string) {
		binary.BigEndian.PutUint32(out[off:], magic)
		binary.BigEndian.PutUint32(out[off+4:], uint32(len(data)))
		copy(out[off+8:], data)
		off += 8 + (len(data)+7)&^7
	}
	ext(0xdeadbeef, "hello")
	ext(ExtBackingFormat, "qcow2")
	ext(0x0badf00d, "")
	off += 8
	binary.BigEndian.PutUint64(out[8:], uint64(off))
	binary.BigEndian.PutUint32(out[16:], uint32(len(name)))
	copy(out[off:], name)
	if _, err := f.WriteAt(out, 0); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeCluster0CraftedMatchesQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	qemutest.Create(t, filepath.Join(dir, "hbase.qcow2"), "qcow2", "16M")
	for _, hl := range []int{104, 112, 128} {
		for _, fmtName := range []string{"raw", "qcow2", ""} {
			t.Run(fmt.Sprintf("hl%d-%s", hl, fmtName), func(t *testing.T) {
				q := filepath.Join(dir, fmt.Sprintf("c%d%s-qemu.qcow2", hl, fmtName))
				ours := filepath.Join(dir, fmt.Sprintf("c%d%s-ours.qcow2", hl, fmtName))
				qemutest.Create(t, q, "qcow2", "16M", "backing_file=hbase.qcow2", "backing_fmt=qcow2")
				craft(t, q, hl, "hbase.qcow2")
				copyFile(t, q, ours)
				name := "hbase.qcow2"
				args := []string{"rebase", "-u", "-b", name, "-F", fmtName}
				if fmtName == "" {
					name = ""
					args = []string{"rebase", "-u", "-b", ""}
				}
				once := filepath.Join(dir, fmt.Sprintf("c%d%s-ours1.qcow2", hl, fmtName))
				if err := unsafeRebase(t, ours, name, fmtName); err != nil {
					t.Fatal(err)
				}
				copyFile(t, ours, once)
				// A second rewrite flips the unknown extensions again.
				if err := unsafeRebase(t, ours, name, fmtName); err != nil {
					t.Fatal(err)
				}
				qemutest.Each(t, func(t *testing.T, o qemutest.Oracle) {
					theirs := filepath.Join(t.TempDir(), filepath.Base(q))
					copyFile(t, q, theirs)
					o.Img(t, "", append(args, theirs)...)
					qemutest.SameBytes(t, theirs, once)
					o.Img(t, "", append(args, theirs)...)
					qemutest.SameBytes(t, theirs, ours)
				})
			})
		}
	}
}

// wop is one guest write for the allocator oracle test.
type wop struct {
	zero    bool
	off, n  int64
	pattern byte
}

func (o wop) qemuIO() string {
	if o.zero {
		return fmt.Sprintf("write -z %d %d", o.off, o.n)
	}
	return fmt.Sprintf("write -P %d %d %d", o.pattern, o.off, o.n)
}

func applyOurs(t testing.TB, path string, ops []wop, resize int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	w, err := NewWriter(osFile{f}, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if resize > 0 {
		if err := w.Resize(resize); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range ops {
		if o.zero {
			err = w.WriteZeroes(o.off, o.n, 0)
		} else {
			err = w.WriteData(o.off, bytes.Repeat([]byte{o.pattern}, int(o.n)))
		}
		if err != nil {
			t.Fatalf("%s: %v", o.qemuIO(), err)
		}
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
}

func TestWriterAllocationMatchesQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	const k, m = 1024, 1024 * 1024
	seq := func(cs int64, offs ...int64) []wop {
		var ops []wop
		for i, o := range offs {
			ops = append(ops, wop{off: o * cs, n: cs, pattern: byte(i + 1)})
		}
		return ops
	}
	tests := []struct {
		name     string
		size     string
		opts     []string
		pre      []string // qemu-io commands applied to both copies first
		snapshot bool     // take an internal snapshot after pre
		ops      []wop
		resize   int64
	}{
		{name: "v3-64k-asc", size: "64M", ops: seq(64*k, 0, 1, 128, 129, 1000)},
		{name: "v3-64k-desc", size: "64M", ops: seq(64*k, 1000, 300, 2, 1)},
		{name: "v3-64k-run", size: "64M", ops: []wop{{off: 0, n: 3 * m, pattern: 7}, {off: 40 * m, n: 128 * k, pattern: 8}}},
		{name: "v2-4k", size: "16M", opts: []string{"compat=0.10", "cluster_size=4096"}, ops: seq(4*k, 5, 6, 2000, 3)},
		{name: "v3-512-refblocks", size: "16M", opts: []string{"cluster_size=512"}, ops: []wop{{off: 0, n: 300 * k, pattern: 1}, {off: 8 * m, n: 64 * k, pattern: 2}}},
		{name: "v3-512-reftable-grows", size: "32M", opts: []string{"cluster_size=512"}, ops: []wop{{off: 0, n: 9 * m, pattern: 3}, {off: 20 * m, n: 512, pattern: 4}}},
		{name: "v3-1k-refbits8", size: "32M", opts: []string{"cluster_size=1024", "refcount_bits=8"}, ops: []wop{{off: 0, n: 5 * m, pattern: 3}}},
		{name: "v3-zero", size: "64M", pre: []string{"write -P 9 0 128k"}, ops: []wop{{zero: true, off: 0, n: 64 * k}, {zero: true, off: 10 * m, n: 192 * k}, {off: 64 * k, n: 64 * k, pattern: 5}}},
		{name: "v3-extl2", size: "64M", opts: []string{"extended_l2=on"}, ops: []wop{{off: 4096, n: 2048, pattern: 1}, {off: 69632, n: 2048, pattern: 2}, {off: 8192, n: 4096, pattern: 3}, {zero: true, off: 32 * m, n: 4096}, {zero: true, off: 40 * m, n: 64 * k}}},
		{name: "v3-snapshot-cow", size: "64M", pre: []string{"write -P 1 0 256k", "write -P 2 32M 64k"}, snapshot: true, ops: []wop{{off: 0, n: 64 * k, pattern: 3}, {off: 128 * k, n: 256 * k, pattern: 4}, {off: 33 * m, n: 64 * k, pattern: 5}}},
		{name: "v3-extl2-snapshot-cow", size: "64M", opts: []string{"extended_l2=on"}, pre: []string{"write -P 1 0 128k", "write -P 2 200k 4k"}, snapshot: true, ops: []wop{{off: 0, n: 64 * k, pattern: 3}, {off: 192 * k, n: 64 * k, pattern: 4}}},
		// Writes over clusters the image owns: runs back to back on the
		// host go in one write, broken where the host order breaks, where a
		// cluster must be allocated and around a zero cluster.
		{name: "v3-in-place-runs", size: "64M", pre: []string{"write -P 1 0 1M", "write -P 2 4M 64k", "write -P 3 2M 64k", "write -P 5 3136k 64k", "write -P 4 3M 64k"},
			ops: []wop{{off: 64 * k, n: 512 * k, pattern: 6}, {off: 2 * m, n: 2*m + 64*k, pattern: 7}, {off: 3 * m, n: 128 * k, pattern: 8}}},
		{name: "v3-in-place-zero-between", size: "64M", pre: []string{"write -P 1 0 512k", "write -z 128k 64k", "write -z 256k 128k"},
			ops: []wop{{off: 0, n: 512 * k, pattern: 2}, {off: 192 * k, n: 128 * k, pattern: 3}}},
		{name: "v3-extl2-in-place", size: "64M", opts: []string{"extended_l2=on"}, pre: []string{"write -P 1 0 256k", "write -z 64k 4k"},
			ops: []wop{{off: 6 * k, n: 200 * k, pattern: 2}, {off: 130 * k, n: 2 * k, pattern: 3}}},
		{name: "v3-resize-l1", size: "1G", opts: []string{"cluster_size=4096"}, resize: 4 << 30, ops: seq(4*k, 0, 900000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := filepath.Join(dir, tc.name+"-qemu.qcow2")
			ours := filepath.Join(dir, tc.name+"-ours.qcow2")
			qemutest.Create(t, q, "qcow2", tc.size, tc.opts...)
			qemutest.IO(t, q, "qcow2", tc.pre...)
			if tc.snapshot {
				qemutest.Img(t, "", "snapshot", "-c", "s1", q)
			}
			copyFile(t, q, ours)
			if tc.resize > 0 {
				qemutest.Img(t, "", "resize", "-q", q, fmt.Sprint(tc.resize))
			}
			var cmds []string
			for _, o := range tc.ops {
				cmds = append(cmds, o.qemuIO())
			}
			qemutest.IO(t, q, "qcow2", cmds...)
			applyOurs(t, ours, tc.ops, tc.resize)
			qemutest.SameBytes(t, q, ours)
			out := qemutest.Img(t, "", "check", ours)
			if !bytes.Contains(out, []byte("No errors were found")) {
				t.Fatalf("check: %s", out)
			}
		})
	}
}

// logFile records every write made through it.
type logFile struct {
	memFile
	log []logWrite
}

type logWrite struct {
	off  int64
	data []byte
}

func (l *logFile) WriteAt(p []byte, off int64) (int, error) {
	l.log = append(l.log, logWrite{off, bytes.Clone(p)})
	return l.memFile.WriteAt(p, off)
}

// TestWriterCrashOrdering replays every prefix of the writes of a sequence of
// operations (as a crash would leave them) and requires each to check without
// refcount errors: leaks are fine, references to unallocated or wrongly
// refcounted clusters are not.
func TestWriterCrashOrdering(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	const k, m = 1024, 1024 * 1024
	tests := []struct {
		name string
		opts []string
		pre  []string
		snap bool
		run  func(w *Writer) error
		// each, when set, checks the guest content of every replayed prefix.
		each func(img *Image) error
	}{
		{name: "snapshot-cow-unmap-reuse", pre: []string{"write -P 1 0 256k", "write -P 2 8M 128k"}, snap: true, run: func(w *Writer) error {
			buf := bytes.Repeat([]byte{7}, 64*k)
			for _, err := range []error{
				w.WriteData(64*k, buf),
				w.Unmap(8*m, 128*k),
				w.WriteZeroes(0, 64*k, layer.MayUnmap),
				w.Flush(),
				w.WriteData(20*m, buf),
				w.WriteData(21*m, buf),
			} {
				if err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "unmap-then-reuse-same-epoch", pre: []string{"write -P 1 0 1M"}, run: func(w *Writer) error {
			buf := bytes.Repeat([]byte{9}, 64*k)
			if err := w.Unmap(0, 256*k); err != nil {
				return err
			}
			for i := int64(0); i < 4; i++ {
				if err := w.WriteData(30*m+i*64*k, buf); err != nil {
					return err
				}
			}
			return nil
		}, each: func(img *Image) error {
			// Unmapped clusters read their old data or zeros, never the
			// data later written into their host clusters.
			b := make([]byte, 64*k)
			for off := int64(0); off < 256*k; off += 64 * k {
				if _, err := img.ReadAt(b, off); err != nil {
					return err
				}
				if !bytes.Equal(b, bytes.Repeat([]byte{1}, len(b))) && !bytes.Equal(b, make([]byte, len(b))) {
					return fmt.Errorf("guest %#x reads neither its old data nor zeros", off)
				}
			}
			return nil
		}},
		{name: "c512-refblocks-and-reftable", opts: []string{"cluster_size=512"}, run: func(w *Writer) error {
			return w.WriteData(0, bytes.Repeat([]byte{3}, 9*m))
		}},
		{name: "grow-l1", opts: []string{"cluster_size=4096"}, pre: []string{"write -P 1 0 64k"}, run: func(w *Writer) error {
			if err := w.Resize(4 << 30); err != nil {
				return err
			}
			return w.WriteData(3<<30, bytes.Repeat([]byte{4}, 4096))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".qcow2")
			qemutest.Create(t, path, "qcow2", "64M", tc.opts...)
			qemutest.IO(t, path, "qcow2", tc.pre...)
			if tc.snap {
				qemutest.Img(t, "", "snapshot", "-c", "s1", path)
			}
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lf := &logFile{memFile: memFile{b: bytes.Clone(orig)}}
			w, err := NewWriter(lf, int64(len(orig)))
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.run(w); err != nil {
				t.Fatal(err)
			}
			if err := w.SetBacking("", ""); err != nil {
				t.Fatal(err)
			}
			if err := w.Finish(); err != nil {
				t.Fatal(err)
			}
			// Checking every prefix of a long log is slow: sample.
			step := max(1, len(lf.log)/60)
			for n := 0; n <= len(lf.log); n += step {
				img := bytes.Clone(orig)
				for _, wr := range lf.log[:n] {
					if end := wr.off + int64(len(wr.data)); end > int64(len(img)) {
						img = append(img, make([]byte, end-int64(len(img)))...)
					}
					copy(img[wr.off:], wr.data)
				}
				rep, err := Check(bytes.NewReader(img), int64(len(img)))
				if err != nil {
					t.Fatalf("after %d of %d writes: %v", n, len(lf.log), err)
				}
				if rep.Corruptions != 0 || rep.CheckErrors != 0 {
					t.Fatalf("after %d of %d writes: %d corruptions: %v", n, len(lf.log), rep.Corruptions, rep.Messages)
				}
				if tc.each != nil {
					im, err := Open(bytes.NewReader(img), int64(len(img)))
					if err == nil {
						err = tc.each(im)
					}
					if err != nil {
						t.Fatalf("after %d of %d writes: %v", n, len(lf.log), err)
					}
				}
			}
			final, err := Check(bytes.NewReader(lf.b), int64(len(lf.b)))
			if err != nil || final.Leaks != 0 {
				t.Fatalf("final image: %v, %d leaks", err, final.Leaks)
			}
		})
	}
}
