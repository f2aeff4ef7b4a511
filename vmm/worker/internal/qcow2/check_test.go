package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

// The check tests compare Check with `qemu-img check` (the oracle) on images
// made at test time: clean images of every kind qemu creates, then images
// damaged by patching bytes at offsets computed from their headers.

// qemuCheck is what `qemu-img check --output=json` says about an image.
type qemuCheck struct {
	exit     int
	json     map[string]any // nil when qemu printed no report
	messages []string       // stderr lines, without qemu-img's own "qemu-img: " lines
}

func runQemuCheck(t testing.TB, o qemutest.Oracle, path string) qemuCheck {
	t.Helper()
	r := o.Check(t, path, "qcow2", "--output=json")
	q := qemuCheck{exit: r.Code}
	if len(r.Stdout) > 0 {
		if err := json.Unmarshal(r.Stdout, &q.json); err != nil {
			t.Fatalf("qemu-img check output: %v\n%s", err, r.Stdout)
		}
		delete(q.json, "filename")
		delete(q.json, "format")
	}
	// qemu prints its "Some clusters may be leaked" notice without a newline.
	errs := strings.ReplaceAll(string(r.Stderr), "on the image file to fix.", "on the image file to fix.\n")
	for _, l := range strings.Split(strings.TrimSuffix(errs, "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "qemu-img: warning: "):
			q.messages = append(q.messages, strings.TrimPrefix(l, "qemu-img: "))
		case l != "" && !strings.HasPrefix(l, "qemu-img: "):
			q.messages = append(q.messages, l)
		}
	}
	return q
}

// ckJSON renders a report as the fields qemu-img check --output=json prints
// (less filename and format), following the presence rules of CheckReport.
func ckJSON(r *CheckReport) map[string]any {
	m := map[string]any{"check-errors": float64(r.CheckErrors)}
	for k, v := range map[string]int64{
		"image-end-offset":    r.ImageEndOffset,
		"corruptions":         r.Corruptions,
		"leaks":               r.Leaks,
		"total-clusters":      r.TotalClusters,
		"allocated-clusters":  r.AllocatedClusters,
		"fragmented-clusters": r.FragmentedClusters,
		"compressed-clusters": r.CompressedClusters,
	} {
		if v != 0 {
			m[k] = float64(v)
		}
	}
	return m
}

// openSized opens path with flag for the rest of the test and returns it
// with its size.
func openSized(t testing.TB, path string, flag int) (*os.File, int64) {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, st.Size()
}

func checkPath(t testing.TB, path string) (*CheckReport, error) {
	t.Helper()
	f, n := openSized(t, path, os.O_RDONLY)
	return Check(f, n)
}

// compareCheck runs Check and the check of every qemu-img oracle on path,
// and reports any difference in the counters, the exit status or the
// messages.
func compareCheck(t *testing.T, path string) {
	t.Helper()
	rep, err := checkPath(t, path)
	qemutest.Each(t, func(t *testing.T, o qemutest.Oracle) {
		q := runQemuCheck(t, o, path)
		if q.json == nil {
			if err == nil {
				t.Errorf("qemu-img check failed (exit %d, %q) but Check reported %+v", q.exit, q.messages, ckJSON(rep))
			}
			return
		}
		if err != nil {
			t.Fatalf("Check: %v; qemu-img check: exit %d %v", err, q.exit, q.json)
		}
		if got := ckJSON(rep); !reflect.DeepEqual(got, q.json) {
			t.Errorf("report differs:\n got %v\nwant %v", got, q.json)
		}
		if got := rep.ExitCode(); got != q.exit {
			t.Errorf("exit code %d, qemu-img check exits %d", got, q.exit)
		}
		var got []string
		for _, m := range rep.Messages {
			got = append(got, m.Text)
		}
		if !reflect.DeepEqual(got, q.messages) {
			t.Errorf("messages differ:\n got %q\nwant %q", got, q.messages)
		}
	})
}

// Writes used by most images: data, a zeroed range, a small write, data far
// away, so that there are several L2 entries and one fragmented cluster.
var ckWrites = []string{
	"write -P 1 0 1M",
	"write -P 2 10M 64k",
	"write -z 20M 128k",
	"write -P 3 30M 4k",
	"write -P 4 60M 64k",
}

func TestCheckCleanImages(t *testing.T) {
	qemutest.NeedQemu(t)
	tests := []struct {
		name string
		opts []string
		cmds []string
		post func(t *testing.T, path string)
		exit int
	}{
		{name: "empty"},
		{name: "v2", opts: []string{"compat=0.10"}, cmds: ckWrites},
		{name: "v3", cmds: ckWrites},
		{name: "cluster512", opts: []string{"cluster_size=512"}, cmds: ckWrites},
		{name: "cluster2M", opts: []string{"cluster_size=2M"}, cmds: ckWrites},
		{name: "extended-l2", opts: []string{"extended_l2=on"}, cmds: append(ckWrites, "write -P 5 40M 2k", "write -z 40M 1k")},
		{name: "extended-l2-32k", opts: []string{"extended_l2=on", "cluster_size=32k"}, cmds: ckWrites},
		{name: "refcount1", opts: []string{"refcount_bits=1"}, cmds: ckWrites},
		{name: "refcount2", opts: []string{"refcount_bits=2"}, cmds: ckWrites},
		{name: "refcount8", opts: []string{"refcount_bits=8"}, cmds: ckWrites},
		{name: "refcount32", opts: []string{"refcount_bits=32"}, cmds: ckWrites},
		{name: "refcount64", opts: []string{"refcount_bits=64"}, cmds: ckWrites},
		{name: "lazy", opts: []string{"lazy_refcounts=on"}, cmds: ckWrites},
		{name: "prealloc-metadata", opts: []string{"preallocation=metadata"}, cmds: []string{"write -P 1 0 64k"}},
		{name: "zero-alloc", cmds: []string{"write -P 1 0 1M", "write -z 64k 128k"}},
		{name: "compressed-zlib", cmds: []string{"write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -c -P 3 1M 64k", "write -P 4 2M 64k"}},
		{name: "compressed-zstd", opts: []string{"compression_type=zstd"}, cmds: []string{"write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 4 2M 64k"}},
		{name: "compressed-extended-l2", opts: []string{"extended_l2=on"}, cmds: []string{"write -c -P 1 0 64k", "write -P 2 64k 4k", "write -c -P 3 128k 64k"}},
		{name: "compressed-512", opts: []string{"cluster_size=512"}, cmds: []string{"write -c -P 1 0 4k"}},
		{
			name: "snapshots", cmds: ckWrites,
			post: func(t *testing.T, path string) {
				qemutest.Img(t, "", "snapshot", "-c", "s1", path)
				qemutest.IO(t, path, "qcow2", "write -P 7 0 128k")
				qemutest.Img(t, "", "snapshot", "-c", "s2", path)
				qemutest.IO(t, path, "qcow2", "write -P 8 64k 128k", "write -c -P 9 50M 64k")
			},
		},
		{
			name: "snapshot-v2", opts: []string{"compat=0.10"}, cmds: ckWrites,
			post: func(t *testing.T, path string) {
				qemutest.Img(t, "", "snapshot", "-c", "s1", path)
				qemutest.IO(t, path, "qcow2", "write -P 7 0 128k")
			},
		},
		{
			name: "snapshot-deleted", cmds: ckWrites,
			post: func(t *testing.T, path string) {
				qemutest.Img(t, "", "snapshot", "-c", "s1", path)
				qemutest.IO(t, path, "qcow2", "write -P 7 0 128k")
				qemutest.Img(t, "", "snapshot", "-d", "s1", path)
			},
		},
		{
			name: "bitmaps", cmds: ckWrites,
			post: func(t *testing.T, path string) {
				qemutest.Img(t, "", "bitmap", "--add", path, "b1")
				qemutest.Img(t, "", "bitmap", "--add", "-g", "512k", path, "b2")
				qemutest.Img(t, "", "bitmap", "--disable", path, "b2")
			},
		},
		{
			name: "dirty-lazy", opts: []string{"lazy_refcounts=on"}, exit: 2,
			post: func(t *testing.T, path string) {
				// abort leaves the dirty bit set and the refcounts not written.
				qemutest.RunIO(t, "", "-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "abort", path)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.name+".qcow2")
			qemutest.Create(t, path, "qcow2", "64M", tt.opts...)
			qemutest.IO(t, path, "qcow2", tt.cmds...)
			if tt.post != nil {
				tt.post(t, path)
			}
			if q := runQemuCheck(t, qemutest.System, path); q.exit != tt.exit {
				t.Fatalf("qemu-img check exits %d, want %d", q.exit, tt.exit)
			}
			compareCheck(t, path)
		})
	}
}

// ckImage gives access to an image's structures for damaging it.
type ckImage struct {
	t    *testing.T
	path string
	h    *Header
	data []byte
}

func ckLoad(t *testing.T, path string) *ckImage {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseHeader(data, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	return &ckImage{t: t, path: path, h: h, data: data}
}

func (c *ckImage) u64(off int64) uint64 { return binary.BigEndian.Uint64(c.data[off:]) }

func (c *ckImage) put64(off int64, v uint64) {
	c.t.Helper()
	f, err := os.OpenFile(c.path, os.O_RDWR, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if _, err := f.WriteAt(b[:], off); err != nil {
		c.t.Fatal(err)
	}
	if off+8 <= int64(len(c.data)) {
		copy(c.data[off:], b[:])
	}
}

func (c *ckImage) put32(off int64, v uint32) {
	c.t.Helper()
	f, err := os.OpenFile(c.path, os.O_RDWR, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	if _, err := f.WriteAt(b[:], off); err != nil {
		c.t.Fatal(err)
	}
	copy(c.data[off:], b[:])
}

// l1Off is the file offset of active L1 entry i.
func (c *ckImage) l1Off(i int) int64 { return int64(c.h.L1TableOffset) + 8*int64(i) }

// l2Off is the file offset of entry j of the L2 table named by L1 entry i.
func (c *ckImage) l2Off(i, j int) int64 {
	c.t.Helper()
	l2 := int64(c.u64(c.l1Off(i)) & L1OffsetMask)
	if l2 == 0 {
		c.t.Fatalf("L1 entry %d is empty", i)
	}
	return l2 + int64(j)*int64(c.h.L2EntrySize())
}

// host is the host cluster offset of guest cluster j in L2 table 0.
func (c *ckImage) host(j int) int64 { return int64(c.u64(c.l2Off(0, j)) & L2OffsetMask) }

// setRefcount writes the stored refcount of host cluster k, for any width.
func (c *ckImage) setRefcount(k int64, v uint64) {
	c.t.Helper()
	h := c.h
	per := h.RefcountEntries()
	rb := int64(c.u64(int64(h.RefcountTableOffset)+8*(k/per)) & RefcountTableOffsetMask)
	if rb == 0 {
		c.t.Fatalf("no refcount block for cluster %d", k)
	}
	idx := k % per
	f, err := os.OpenFile(c.path, os.O_RDWR, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	bits := int64(h.RefcountBits())
	switch {
	case bits < 8:
		off := rb + idx*bits/8
		shift := uint(idx * bits % 8)
		b := c.data[off]
		mask := byte(1<<bits-1) << shift
		b = b&^mask | byte(v)<<shift&mask
		if _, err := f.WriteAt([]byte{b}, off); err != nil {
			c.t.Fatal(err)
		}
		c.data[off] = b
	default:
		n := bits / 8
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], v)
		off := rb + idx*n
		if _, err := f.WriteAt(b[8-n:], off); err != nil {
			c.t.Fatal(err)
		}
		copy(c.data[off:], b[8-n:])
	}
}

// grow appends n zero clusters to the file.
func (c *ckImage) grow(n int64) {
	c.t.Helper()
	size := int64(len(c.data)) + n*c.h.ClusterSize()
	if err := os.Truncate(c.path, size); err != nil {
		c.t.Fatal(err)
	}
	c.data = append(c.data, make([]byte, n*c.h.ClusterSize())...)
}

// snapOff is the file offset of snapshot table entry i.
func (c *ckImage) snapOff(i int) int64 {
	c.t.Helper()
	off := int64(c.h.SnapshotsOffset)
	for k := 0; k < i; k++ {
		eds := int64(binary.BigEndian.Uint32(c.data[off+36:]))
		ids := int64(binary.BigEndian.Uint16(c.data[off+12:]))
		ns := int64(binary.BigEndian.Uint16(c.data[off+14:]))
		off = (off + 40 + eds + ids + ns + 7) &^ 7
	}
	return off
}

// bitmapTable is the bitmap table offset of bitmap directory entry i.
func (c *ckImage) bitmapTable(i int) uint64 {
	c.t.Helper()
	b, ok, err := c.h.Bitmaps()
	if err != nil || !ok {
		c.t.Fatalf("no bitmaps extension (%v)", err)
	}
	off := int64(b.DirectoryOffset)
	for k := 0; k < i; k++ {
		nameLen := int64(binary.BigEndian.Uint16(c.data[off+18:]))
		extra := int64(binary.BigEndian.Uint32(c.data[off+20:]))
		off += (24 + nameLen + extra + 7) &^ 7
	}
	return c.u64(off)
}

// ckCase is a damaged image: made by qemu, then patched.
type ckCase struct {
	name   string
	opts   []string
	cmds   []string
	post   func(t *testing.T, path string)
	damage func(c *ckImage)
	// exit is the exit status qemu-img check must have, as a guard that
	// the damage does what the case says.
	exit int
}

// make creates the case's image at path.
func (tt ckCase) make(t *testing.T, path string) {
	t.Helper()
	cmds := tt.cmds
	if cmds == nil {
		cmds = ckWrites
	}
	qemutest.Create(t, path, "qcow2", "64M", tt.opts...)
	qemutest.IO(t, path, "qcow2", cmds...)
	if tt.post != nil {
		tt.post(t, path)
	}
	tt.damage(ckLoad(t, path))
	if q := runQemuCheck(t, qemutest.System, path); q.exit != tt.exit {
		t.Fatalf("qemu-img check exits %d, want %d: the damage is not what the case expects", q.exit, tt.exit)
	}
}

// ckDamagedCases are the damaged images the check and repair tests share.
func ckDamagedCases() []ckCase {
	const cs = 65536
	withSnapshots := func(t *testing.T, path string) {
		qemutest.Img(t, "", "snapshot", "-c", "s1", path)
		qemutest.IO(t, path, "qcow2", "write -P 7 0 128k")
		qemutest.Img(t, "", "snapshot", "-c", "s2", path)
		qemutest.IO(t, path, "qcow2", "write -P 8 64k 128k")
	}
	withBitmap := func(t *testing.T, path string) {
		qemutest.Img(t, "", "bitmap", "--add", path, "b1")
		qemutest.IO(t, path, "qcow2", "write -P 9 0 64k", "write -P 9 40M 64k")
	}
	return []ckCase{
		{
			name: "leak-unused-cluster", exit: 3,
			damage: func(c *ckImage) {
				n := int64(len(c.data)) / cs
				c.grow(2)
				c.setRefcount(n, 1)
				c.setRefcount(n+1, 3)
			},
		},
		{
			name: "leak-bumped-refcount", exit: 2, // also an OFLAG_COPIED error
			damage: func(c *ckImage) { c.setRefcount(c.host(1)/cs, 2) },
		},
		{
			name: "refcount-zero-data", exit: 2,
			damage: func(c *ckImage) { c.setRefcount(c.host(1)/cs, 0) },
		},
		{
			name: "refcount-zero-l2", exit: 2,
			damage: func(c *ckImage) { c.setRefcount(int64(c.u64(c.l1Off(0))&L1OffsetMask)/cs, 0) },
		},
		{
			name: "refcount-zero-header", exit: 2,
			damage: func(c *ckImage) { c.setRefcount(0, 0) },
		},
		{
			name: "l2-entry-beyond-eof", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), OflagCopied|0x10000000) },
		},
		{
			name: "l2-entry-just-past-eof", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), OflagCopied|uint64(len(c.data))) },
		},
		{
			name: "l2-entry-unaligned-near-eof", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), OflagCopied|uint64(len(c.data)-cs+0x200)) },
		},
		{
			name: "l2-entry-on-refcount-table", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), OflagCopied|c.h.RefcountTableOffset) },
		},
		{
			name: "l2-entry-on-l1", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), OflagCopied|c.h.L1TableOffset) },
		},
		{
			name: "l2-entry-on-header", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), 0x200) },
		},
		{
			name: "l2-entry-unaligned", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), OflagCopied|uint64(c.host(2))+0x200) },
		},
		{
			name: "zero-alloc-unaligned", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), OflagCopied|uint64(c.host(2))+0x200|OflagZero) },
		},
		{
			name: "l2-reserved-bits", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), c.u64(c.l2Off(0, 2))|0x100|1<<57) },
		},
		{
			name: "l2-copied-flag-missing", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), c.u64(c.l2Off(0, 2))&^OflagCopied) },
		},
		{
			name: "compressed-with-copied-flag", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 2), c.u64(c.l2Off(0, 2))|OflagCompressed) },
		},
		{
			name: "two-entries-one-cluster", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 3), c.u64(c.l2Off(0, 2))) },
		},
		{
			name: "l1-entry-unaligned", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l1Off(0), c.u64(c.l1Off(0))+0x200) },
		},
		{
			name: "l1-reserved-bits", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l1Off(0), c.u64(c.l1Off(0))|0x100) },
		},
		{
			name: "l1-copied-flag-only", exit: 2, // the L2 table is read from the header cluster
			damage: func(c *ckImage) { c.put64(c.l1Off(0), OflagCopied) },
		},
		{
			name: "l1-entry-on-refcount-block", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l1Off(0), OflagCopied|c.u64(int64(c.h.RefcountTableOffset))) },
		},
		{
			name: "l1-beyond-eof", exit: 2,
			damage: func(c *ckImage) { c.put64(40, 0x10000000) },
		},
		{
			name: "refcount-table-beyond-eof", exit: 2,
			damage: func(c *ckImage) { c.put64(48, 0x10000000) },
		},
		{
			name: "refblock-unaligned", exit: 1, // check errors
			damage: func(c *ckImage) {
				rt := int64(c.h.RefcountTableOffset)
				c.put64(rt, c.u64(rt)+0x200)
			},
		},
		{
			name: "refblock-reserved-bits", exit: 2,
			damage: func(c *ckImage) {
				rt := int64(c.h.RefcountTableOffset)
				c.put64(rt, c.u64(rt)|1)
			},
		},
		{
			name: "refblock-beyond-eof", exit: 2,
			damage: func(c *ckImage) { c.put64(int64(c.h.RefcountTableOffset), 0x10000000) },
		},
		{
			name: "refblock-extra-beyond-eof", exit: 2,
			damage: func(c *ckImage) { c.put64(int64(c.h.RefcountTableOffset)+8, 0x10000000) },
		},
		{
			name: "refblock-shared-with-l2", exit: 2,
			damage: func(c *ckImage) {
				c.put64(int64(c.h.RefcountTableOffset)+8, c.u64(c.l1Off(0))&L1OffsetMask)
			},
		},
		{
			name: "refcount1-overflow", opts: []string{"refcount_bits=1"}, exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 3), c.u64(c.l2Off(0, 2))&^OflagCopied) },
		},
		{
			name: "refcount64-huge", opts: []string{"refcount_bits=64"}, exit: 2,
			damage: func(c *ckImage) { c.setRefcount(c.host(1)/cs, 1<<40) },
		},
		{
			name: "refcount32-leak", opts: []string{"refcount_bits=32"}, exit: 2,
			damage: func(c *ckImage) { c.setRefcount(c.host(1)/cs, 70000) },
		},
		{
			// A refcount table cut to its first cluster: with 512-byte
			// clusters and 64-bit refcounts it covers the first 2 MiB, and
			// every cluster in use past them reads a refcount of 0.
			name: "reftable-cut", opts: []string{"cluster_size=512", "refcount_bits=64"}, cmds: []string{"write -P 1 0 3M"}, exit: 2,
			damage: func(c *ckImage) { c.put32(56, 1) },
		},
		{
			name: "refcount2-leak", opts: []string{"refcount_bits=2"}, exit: 2,
			damage: func(c *ckImage) { c.setRefcount(c.host(1)/cs, 3) },
		},
		{
			name: "extended-l2-bad-bitmaps", opts: []string{"extended_l2=on"}, exit: 2,
			damage: func(c *ckImage) {
				c.put64(c.l2Off(0, 2)+8, 0x0000000100000001) // a subcluster allocated and zero
				c.put64(c.l2Off(0, 40), 0)                   // unallocated...
				c.put64(c.l2Off(0, 40)+8, 0x1)               // ...with an allocated subcluster
				c.put64(c.l2Off(0, 3), c.u64(c.l2Off(0, 3))|OflagCompressed)
			},
		},
		{
			name: "snapshot-l1-unaligned", post: withSnapshots, exit: 2,
			damage: func(c *ckImage) { c.put64(c.snapOff(1), c.u64(c.snapOff(1))+0x200) },
		},
		{
			name: "snapshot-l1-too-large", post: withSnapshots, exit: 2,
			damage: func(c *ckImage) { c.put32(c.snapOff(1)+8, 5000000) },
		},
		{
			name: "snapshot-l1-empty", post: withSnapshots, exit: 3,
			damage: func(c *ckImage) { c.put32(c.snapOff(1)+8, 0) },
		},
		{
			name: "snapshot-incomplete", post: withSnapshots, exit: 2,
			damage: func(c *ckImage) { c.put32(c.snapOff(1)+36, 8) },
		},
		{
			name: "snapshot-extra-too-large", post: withSnapshots, exit: 1,
			damage: func(c *ckImage) { c.put32(c.snapOff(1)+36, 2000) },
		},
		{
			name: "snapshot-count-past-table", post: withSnapshots, exit: 2,
			damage: func(c *ckImage) { c.put32(60, 3) },
		},
		{
			name: "snapshot-count-too-large", post: withSnapshots, exit: 1,
			damage: func(c *ckImage) { c.put32(60, 70000) },
		},
		{
			name: "snapshot-table-unaligned", post: withSnapshots, exit: 1,
			damage: func(c *ckImage) { c.put64(64, c.h.SnapshotsOffset+8) },
		},
		{
			name: "snapshot-table-beyond-eof", exit: 2,
			damage: func(c *ckImage) { c.put32(60, 1); c.put64(64, 0x10000000) },
		},
		{
			name: "snapshot-shared-cluster-refcount", post: withSnapshots, exit: 2,
			damage: func(c *ckImage) { c.setRefcount(c.host(3)/cs, 1) },
		},
		{
			name: "bitmap-table-refcount-zero", post: withBitmap, exit: 2,
			damage: func(c *ckImage) { c.setRefcount(int64(c.bitmapTable(0))/cs, 0) },
		},
		{
			name: "bitmap-data-refcount-zero", post: withBitmap, exit: 2,
			damage: func(c *ckImage) {
				c.setRefcount(int64(c.u64(int64(c.bitmapTable(0)))&L1OffsetMask)/cs, 0)
			},
		},
		{
			name: "bitmap-data-leak", post: withBitmap, exit: 3,
			// All ones without a cluster: the data cluster leaks.
			damage: func(c *ckImage) { c.put64(int64(c.bitmapTable(0)), 1) },
		},
		{
			name: "bitmaps-autoclear-cleared", post: withBitmap, exit: 3, // qemu ignores the bitmaps
			damage: func(c *ckImage) { c.put64(88, c.h.AutoclearFeatures&^AutoclearBitmaps) },
		},
		{
			name: "no-snapshots-table-unaligned", exit: 1,
			damage: func(c *ckImage) { c.put64(64, 0x10008) },
		},
		{
			name: "corrupt-bit", exit: 0,
			damage: func(c *ckImage) { c.put64(72, IncompatCorrupt) },
		},
		{
			name: "dirty-bit", exit: 0,
			damage: func(c *ckImage) { c.put64(72, IncompatDirty) },
		},
		{
			name: "virtual-size-not-sector-multiple", exit: 0,
			damage: func(c *ckImage) { c.put64(24, 64<<20-100) },
		},
	}
}

func TestCheckDamagedImages(t *testing.T) {
	qemutest.NeedQemu(t)
	for _, tt := range ckDamagedCases() {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.name+".qcow2")
			tt.make(t, path)
			compareCheck(t, path)
		})
	}
}

func TestCheckErrors(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "a.qcow2")
	qemutest.Create(t, path, "qcow2", "64M")
	qemutest.IO(t, path, "qcow2", "write -P 1 0 64k")

	if _, err := Check(bytes.NewReader([]byte("not a qcow2 image at all, but long enough for a header......................")), 80); errcode.Of(err) != errcode.Qcow2BadHeader {
		t.Errorf("Check(garbage) = %v, want %s", err, errcode.Qcow2BadHeader)
	}

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old := MaxCheckWork
	MaxCheckWork = 100
	defer func() { MaxCheckWork = old }()
	if _, err := Check(bytes.NewReader(data), int64(len(data))); errcode.Of(err) != errcode.ImageTooLarge {
		t.Errorf("Check with a tiny work budget = %v, want %s", err, errcode.ImageTooLarge)
	}
}

func TestRefCounter(t *testing.T) {
	var rc checkCounts
	rc.init(10)
	tests := []struct {
		k int64
		v uint64
	}{
		{0, 1}, {9, 65534}, {10, 65535}, {70000, 1 << 40}, {3, 0}, {1 << 20, 2},
	}
	for _, tt := range tests {
		rc.set(tt.k, tt.v)
	}
	for _, tt := range tests {
		if got := rc.get(tt.k); got != tt.v {
			t.Errorf("get(%d) = %d, want %d", tt.k, got, tt.v)
		}
	}
	if got := rc.get(5); got != 0 {
		t.Errorf("get(5) = %d, want 0", got)
	}
	rc.set(10, 7)
	if got := rc.get(10); got != 7 {
		t.Errorf("get(10) after lowering = %d, want 7", got)
	}
	// nextNonZero finds what scanning with get finds, across a short first
	// chunk, chunks never written and the end of the counters.
	points := []int64{0, 1, 3, 9, 10, 11, 12, 1 << 16, 69999, 70000, 70001, 1<<20 - 1, 1 << 20, 1<<20 + 1, 1 << 21}
	for _, from := range points {
		for _, end := range points {
			if end < from {
				continue
			}
			want := from
			for want < end && rc.get(want) == 0 {
				want++
			}
			if got := rc.nextNonZero(from, end); got != want {
				t.Errorf("nextNonZero(%d, %d) = %d, want %d", from, end, got, want)
			}
		}
	}
}

func TestCHexAlt(t *testing.T) {
	for v, want := range map[uint64]string{0: "0", 1: "0x1", 0x20200: "0x20200"} {
		if got := checkHexAlt(v); got != want {
			t.Errorf("checkHexAlt(%d) = %q, want %q", v, got, want)
		}
	}
}

// TestCheckForesees: calculate fails before walking anything when its walks
// would spend more than the budget, and spends exactly what it foresaw when
// they do not: one entry per L1 entry and a table's worth per L2 table, for
// the active L1 table and every snapshot's.
func TestCheckForesees(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "a.qcow2")
	qemutest.Create(t, path, "qcow2", "1G") // 2 L1 entries, 64 KiB clusters
	qemutest.IO(t, path, "qcow2", "write -P 1 0 64k")
	old := MaxCheckWork
	defer func() { MaxCheckWork = old }()
	for _, c := range []struct {
		snapshot bool
		cost     int64
	}{
		{false, 2 + 8192},
		{true, 2 * (2 + 8192)},
	} {
		if c.snapshot {
			qemutest.Img(t, dir, "snapshot", "-c", "s1", "a.qcow2")
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, budget := range []int64{c.cost - 1, c.cost} {
			MaxCheckWork = budget
			rc, err := newRefChecker(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if err := rc.load(); err != nil {
				t.Fatal(err)
			}
			err = rc.calculate()
			if budget < c.cost && (errcode.Of(err) != errcode.ImageTooLarge || rc.work != budget) {
				t.Errorf("snapshot %v, budget %d: %v, %d left", c.snapshot, budget, err, rc.work)
			}
			if budget == c.cost && (err != nil || rc.work != 0) {
				t.Errorf("snapshot %v, budget %d: %v, %d left", c.snapshot, budget, err, rc.work)
			}
		}
	}
}
