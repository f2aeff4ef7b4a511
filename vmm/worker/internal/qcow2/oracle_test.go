package qcow2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/layer/layertest"
)

func openPath(t testing.TB, path string) *Image { return layertest.OpenFile(t, path, Open) }

type qinfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	ClusterSize     int64  `json:"cluster-size"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	FormatSpecific  struct {
		Data struct {
			Compat          string `json:"compat"`
			CompressionType string `json:"compression-type"`
			LazyRefcounts   bool   `json:"lazy-refcounts"`
			RefcountBits    int    `json:"refcount-bits"`
			Corrupt         bool   `json:"corrupt"`
			ExtendedL2      bool   `json:"extended-l2"`
		} `json:"data"`
	} `json:"format-specific"`
	Snapshots []struct {
		ID          string `json:"id"`
		Name        string `json:"name"`
		VMStateSize uint64 `json:"vm-state-size"`
		DateSec     uint32 `json:"date-sec"`
		DateNsec    uint32 `json:"date-nsec"`
		VMClockSec  uint64 `json:"vm-clock-sec"`
		VMClockNsec uint64 `json:"vm-clock-nsec"`
		Icount      *int64 `json:"icount"`
	} `json:"snapshots"`
}

func qemuInfo(t testing.TB, path string) qinfo {
	t.Helper()
	var in qinfo
	if err := json.Unmarshal(qemutest.Img(t, "", "info", "--output=json", "-f", "qcow2", path), &in); err != nil {
		t.Fatal(err)
	}
	return in
}

// extents lists img's extents from 0 to the virtual size, checking that they
// tile it.
func extents(t testing.TB, img *Image) []layer.Extent {
	t.Helper()
	var out []layer.Extent
	for off := int64(0); off < img.VirtualSize(); {
		e, err := img.Extent(off)
		if err != nil {
			t.Fatalf("Extent(%#x): %v", off, err)
		}
		if e.Start != off || e.Length <= 0 || e.End() > img.VirtualSize() {
			t.Fatalf("Extent(%#x) = %+v: does not start at the offset or has a bad length", off, e)
		}
		if e.Compressed && e.HostOffset != -1 {
			t.Fatalf("Extent(%#x) = %+v: want HostOffset -1", off, e)
		}
		out = append(out, e)
		off = e.End()
		if len(out) > 1<<20 {
			t.Fatal("too many extents")
		}
	}
	return out
}

// compareMap checks that every byte has the same status in our extents and in
// qemu-img map of the image opened alone.
func compareMap(t testing.TB, img *Image, path string) {
	t.Helper()
	qm := qemutest.Map(t, qemutest.Alone("qcow2", path), "")
	ex := extents(t, img)
	i := 0
	for _, q := range qm {
		for x := q.Start; x < q.Start+q.Length; {
			for i < len(ex) && ex[i].End() <= x {
				i++
			}
			if i == len(ex) {
				t.Fatalf("qemu map %+v reaches past our extents", q)
			}
			e := ex[i]
			end := min(e.End(), q.Start+q.Length)
			desc := func() string {
				off := "none"
				if q.Offset != nil {
					off = fmt.Sprintf("%#x", *q.Offset)
				}
				return fmt.Sprintf("at guest %#x: ours %+v, qemu start=%#x len=%#x present=%v zero=%v data=%v offset=%s",
					x, e, q.Start, q.Length, q.Present, q.Zero, q.Data, off)
			}
			hostAt := func(start, host int64) int64 { return host + (x - start) }
			switch {
			case !q.Present:
				if e.Kind != layer.Unallocated {
					t.Fatalf("kind mismatch %s", desc())
				}
				if q.Offset == nil && e.HostOffset != -1 || q.Offset != nil && hostAt(e.Start, e.HostOffset) != hostAt(q.Start, *q.Offset) {
					t.Fatalf("unallocated host offset mismatch %s", desc())
				}
			case q.Data && q.Offset != nil:
				if e.Kind != layer.Data || e.Compressed || hostAt(e.Start, e.HostOffset) != hostAt(q.Start, *q.Offset) {
					t.Fatalf("data mismatch %s", desc())
				}
			case q.Data:
				if e.Kind != layer.Data || !e.Compressed {
					t.Fatalf("compressed mismatch %s", desc())
				}
			case q.Zero:
				if e.Kind != layer.Zero {
					t.Fatalf("zero mismatch %s", desc())
				}
				if q.Offset == nil && e.HostOffset != -1 || q.Offset != nil && hostAt(e.Start, e.HostOffset) != hostAt(q.Start, *q.Offset) {
					t.Fatalf("zero host offset mismatch %s", desc())
				}
			default:
				t.Fatalf("unexpected qemu map entry %s", desc())
			}
			x = end
		}
	}
	if last := qm[len(qm)-1]; last.Start+last.Length != img.VirtualSize() {
		t.Fatalf("qemu map ends at %d, virtual size %d", last.Start+last.Length, img.VirtualSize())
	}
}

// compareContent checks ReadAt against qemu-img convert -O raw of the image
// alone, with large unaligned reads, small reads and parallel reads.
func compareContent(t testing.TB, img *Image, path string) {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "content.raw")
	qemutest.Img(t, "", "convert", qemutest.Alone("qcow2", path), "-O", "raw", raw)
	rf, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	st, err := rf.Stat()
	if err != nil {
		t.Fatal(err)
	}
	size := st.Size()
	if size != img.VirtualSize() {
		t.Fatalf("raw is %d bytes, virtual size %d", size, img.VirtualSize())
	}
	// compare reads chunk bytes at off from both and compares them.
	compare := func(buf, want []byte, off int64) error {
		wn, _ := rf.ReadAt(want, off)
		n, err := img.ReadAt(buf, off)
		if n != wn || (n < len(buf)) != (err != nil) || (err != nil && err != io.EOF) {
			return fmt.Errorf("ReadAt(%d bytes at %#x) = %d, %v; want %d", len(buf), off, n, err, wn)
		}
		if !bytes.Equal(buf[:n], want[:n]) {
			i := 0
			for buf[i] == want[i] {
				i++
			}
			return fmt.Errorf("content differs at guest offset %#x (read of %d at %#x): got %#x want %#x", off+int64(i), len(buf), off, buf[i], want[i])
		}
		return nil
	}
	check := func(chunk int, stride int64) {
		buf, want := make([]byte, chunk), make([]byte, chunk)
		for off := int64(0); off < size; off += stride {
			if err := compare(buf, want, off); err != nil {
				t.Fatal(err)
			}
		}
	}
	check(3<<20+7, 3<<20+7)
	check(4096+513, 4096+513+int64(size/20000))
	// Parallel readers share the L2 cache and decompressor.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			n := 65536 + g*1000
			buf, want := make([]byte, n), make([]byte, n)
			for off := int64(g * 777); off < size; off += int64(n) * 4 {
				if err := compare(buf, want, off); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Reads at and past the end.
	if n, err := img.ReadAt(make([]byte, 10), img.VirtualSize()); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt at the virtual size = %d, %v; want 0, EOF", n, err)
	}
}

// checkRefcounts checks that the header cluster, the L1 table, every L2 table
// and every standard data cluster have a non-zero refcount, and refcount 1
// when the COPIED flag is set (active L1/L2 entries, no snapshots).
func checkRefcounts(t testing.TB, img *Image) {
	t.Helper()
	rt, err := img.RefcountTable()
	if err != nil {
		t.Fatal(err)
	}
	h := img.Header()
	blocks := map[int64]*RefcountBlock{}
	refcount := func(host int64) uint64 {
		ci := host >> h.ClusterBits
		ti := ci / h.RefcountEntries()
		if ti >= int64(len(rt)) {
			t.Fatalf("host offset %#x beyond the refcount table", host)
		}
		boff := int64(rt[ti] & RefcountTableOffsetMask)
		if boff == 0 {
			return 0
		}
		b := blocks[boff]
		if b == nil {
			b, err = img.ReadRefcountBlock(boff)
			if err != nil {
				t.Fatal(err)
			}
			blocks[boff] = b
		}
		return b.Get(int(ci % h.RefcountEntries()))
	}
	if rc := refcount(0); rc != 1 {
		t.Errorf("refcount of the header cluster = %d, want 1", rc)
	}
	if rc := refcount(int64(h.L1TableOffset)); rc != 1 {
		t.Errorf("refcount of the L1 table = %d, want 1", rc)
	}
	for i, l1e := range img.L1() {
		l2off := int64(l1e & L1OffsetMask)
		if l2off == 0 {
			continue
		}
		rc := refcount(l2off)
		if rc == 0 || (l1e&OflagCopied != 0) != (rc == 1) {
			t.Errorf("L1[%d]=%#x: L2 refcount %d", i, l1e, rc)
		}
		tb, err := img.ReadL2Table(l2off)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < tb.Len(); j++ {
			e := tb.Entry(j)
			if e.Type != ClusterNormal && e.Type != ClusterZeroAlloc {
				continue
			}
			rc := refcount(e.HostOffset)
			if rc == 0 || e.Copied != (rc == 1) {
				t.Errorf("L2 entry %#x (table %#x index %d): refcount %d", e.Raw, l2off, j, rc)
			}
		}
	}
}
