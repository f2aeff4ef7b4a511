package worker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/internal/qemutest"
	"instarfs/proto"
)

// openChain opens the chain of top the way the host would hand it over:
// names and formats taken from qemu-img info --backing-chain.
func openChain(t *testing.T, dir, top string) []*opened {
	t.Helper()
	var infos []struct {
		Filename string `json:"filename"`
		Format   string `json:"format"`
	}
	if err := json.Unmarshal(qemutest.Img(t, dir, "info", "--backing-chain", "--output=json", top), &infos); err != nil {
		t.Fatal(err)
	}
	var chain []*opened
	for _, in := range infos {
		f, err := os.Open(filepath.Join(dir, in.Filename))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		o, err := openImage(f, proto.ImageRef{Name: in.Filename, Format: in.Format}, false)
		if err != nil {
			t.Fatalf("opening %s: %v", in.Filename, err)
		}
		chain = append(chain, o)
	}
	return chain
}

// TestVecReaderMatchesFill fills random sets of buffers through vecReader
// and through the chain's Fill: they must read the same bytes. The base
// stores 1,536 scattered 4 KiB clusters back to back in its file (more than
// one preadv takes), the top rewrites some and adds compressed and zero
// clusters; the second chain has a raw base, and the last the same qcow2
// base cut short after it was opened, so that preadv reads short. The
// chains are also read with a preadv that reads at most 3000 bytes a call,
// and one that fails now and then.
//
// The same requests go through view too, with windows of 64 KiB and room
// for four (so that runs cross windows' ends, windows are evicted and some
// runs find none): the spans must show the same bytes, and the cut base's
// missing part fails.
func TestVecReaderMatchesFill(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	var w strings.Builder
	for i := range 1536 {
		fmt.Fprintf(&w, " -c 'write -P %d %d 4k'", 1+i%250, i*8192)
	}
	sh(t, dir, `
qemu-img create -q -f raw src.raw 16M
qemu-io -f raw`+w.String()+` src.raw >/dev/null
qemu-img convert -f raw -O qcow2 -o cluster_size=4k src.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0xa1 64k 64k' -c 'write -c -P 0xa2 1M 64k' -c 'write -z 2M 64k' -c 'write -P 0xa3 15M 64k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b src.raw -F raw rtop.qcow2
qemu-io -c 'write -P 0xb1 128k 64k' rtop.qcow2 >/dev/null
cp base.qcow2 short.qcow2
qemu-img create -q -f qcow2 -b short.qcow2 -F qcow2 stop.qcow2
`)
	short := func(fd int, iovs [][]byte, off int64) (int, error) {
		// At most 3000 bytes, ending inside a buffer.
		var cut [][]byte
		n := 0
		for _, b := range iovs {
			k := min(len(b), 3000-n)
			cut = append(cut, b[:k])
			if n += k; n == 3000 {
				break
			}
		}
		return unix.Preadv(fd, cut, off)
	}
	calls := 0
	failing := func(fd int, iovs [][]byte, off int64) (int, error) {
		if calls++; calls%3 == 0 {
			return 0, unix.EIO
		}
		return short(fd, iovs, off)
	}
	cases := []struct {
		top    string
		preadv func(int, [][]byte, int64) (int, error)
	}{
		{"top.qcow2", unix.Preadv},
		{"rtop.qcow2", unix.Preadv},
		{"top.qcow2", short},
		{"rtop.qcow2", failing},
		{"stop.qcow2", unix.Preadv},
	}
	for i, c := range cases {
		top := c.top
		t.Run(fmt.Sprint(i, top), func(t *testing.T) {
			old := preadv
			t.Cleanup(func() { preadv = old })
			preadv = c.preadv
			imgs := openChain(t, dir, top)
			if top == "stop.qcow2" {
				// Cut the base in the middle of its data.
				if err := os.Truncate(filepath.Join(dir, "short.qcow2"), imgs[1].size/2); err != nil {
					t.Fatal(err)
				}
			}
			chain := stackOf(imgs)
			size := chain.VirtualSize()
			rng := rand.New(rand.NewPCG(3, 4))
			v := &vecReader{chain: chain, imgs: imgs}
			m := newMapper()
			defer m.close()
			for round := range 40 {
				var reqs, want []fillReq
				var werr error
				for off := int64(rng.IntN(64)) * 512; off < size; {
					n := min(int64(1+rng.IntN(64))*512*int64(1+rng.IntN(8)), size-off)
					reqs = append(reqs, fillReq{make([]byte, n), off})
					p := make([]byte, n)
					if err := chain.Fill(p, off); err != nil && werr == nil {
						werr = err
					}
					want = append(want, fillReq{p, off})
					off += n + int64(rng.IntN(4))*4096*int64(rng.IntN(2))
				}
				err := v.fill(reqs)
				if (err == nil) != (werr == nil) {
					t.Fatalf("round %d: vecReader: %v, Fill: %v", round, err, werr)
				}
				if err != nil {
					if err := viewMatches(v, m, reqs, want); err == nil {
						t.Fatalf("round %d: view where Fill fails: %v", round, err)
					}
					continue
				}
				for i := range reqs {
					if !bytes.Equal(reqs[i].p, want[i].p) {
						t.Fatalf("round %d: %d bytes at %d differ from Fill's", round, len(reqs[i].p), reqs[i].off)
					}
				}
				if err := viewMatches(v, m, reqs, want); err != nil {
					t.Fatalf("round %d: view: %v", round, err)
				}
			}
			if m.mapped > mapBudget || len(m.idle) != len(m.wins) {
				t.Errorf("%d bytes mapped, %d windows of %d released", m.mapped, len(m.idle), len(m.wins))
			}
		})
	}
}

// viewMatches shows reqs through v.view and m and compares the spans with
// want. Held windows are released; the bytes are read inside readMapped.
func viewMatches(v *vecReader, m *mapper, reqs, want []fillReq) error {
	defer func(size, budget int64) { windowSize, mapBudget = size, budget }(windowSize, mapBudget)
	windowSize, mapBudget = 64<<10, 256<<10
	for _, r := range reqs {
		clear(r.p)
	}
	var held []hold
	defer func() {
		for _, h := range held {
			m.put(h)
		}
	}()
	spans, err := v.view(reqs, m, &held, nil)
	if err != nil {
		return err
	}
	return m.read(func() error {
		for _, r := range want {
			got := make([]byte, 0, len(r.p))
			for len(spans) > 0 && len(got) < len(r.p) {
				if spans[0].off != r.off+int64(len(got)) {
					return fmt.Errorf("a span at %d, where %d was next", spans[0].off, r.off+int64(len(got)))
				}
				got, spans = append(got, spans[0].b...), spans[1:]
			}
			if !bytes.Equal(got, r.p) {
				return fmt.Errorf("%d bytes at %d differ from Fill's", len(r.p), r.off)
			}
		}
		if len(spans) > 0 {
			return fmt.Errorf("%d spans past the requests", len(spans))
		}
		return nil
	})
}

func TestSpanAt(t *testing.T) {
	data := []byte("abcdefghijkl")
	spans := []span{{off: 0, b: data[0:4]}, {off: 4, b: data[4:10]}, {off: 10, b: data[10:12]}}
	for _, c := range []struct {
		a, b int64
		want string
	}{
		{0, 12, "abcd"}, {3, 12, "d"}, {4, 12, "efghij"}, {5, 8, "fgh"}, {9, 10, "j"}, {10, 12, "kl"}, {11, 12, "l"},
	} {
		if got := string(spanAt(spans, c.a, c.b)); got != c.want {
			t.Errorf("spanAt(%d, %d) = %q, want %q", c.a, c.b, got, c.want)
		}
	}
}

// TestNonZeroHead: the probe reads the file where a span's guest offset
// lies (not the guest offset itself), at most probeBytes and never past the
// compared range or the span, and says nothing of buffers.
func TestNonZeroHead(t *testing.T) {
	// The file: zeros, but for bytes [1000, 1100), [1900, 1910) and
	// [2000, 2010).
	data := make([]byte, 4096)
	for _, r := range [][2]int{{1000, 1100}, {1900, 1910}, {2000, 2010}} {
		for i := r[0]; i < r[1]; i++ {
			data[i] = 0xaa
		}
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o := &opened{file: f, size: int64(len(data))}
	// Guest [0, 1000) is the file's [900, 1900), guest [1000, 1100) its
	// [1950, 2050), guest [1100, 1200) a buffer of nonzero bytes.
	spans := []span{
		{off: 0, b: data[900:1900], src: o, host: 900},
		{off: 1000, b: data[1950:2050], src: o, host: 1950},
		{off: 1100, b: bytes.Repeat([]byte{1}, 100)},
	}
	for _, c := range []struct {
		a, b int64
		want bool
	}{
		{0, 1000, false},    // file 900..963: the nonzero bytes lie past probeBytes
		{40, 1000, true},    // file 940..1003
		{40, 100, false},    // the range ends where they start
		{40, 101, true},     // one of them in range
		{200, 1000, false},  // file 1100..1163
		{990, 1100, false},  // file 1890..1899: the span ends where they start
		{1000, 1100, true},  // file 1950..2013
		{1000, 1050, false}, // the range ends where they start
		{1060, 1100, false}, // file 2010..2049
		{1100, 1200, false}, // a buffer: nothing known
	} {
		if got := nonZeroHead(spans, c.a, c.b); got != c.want {
			t.Errorf("nonZeroHead(%d, %d) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
