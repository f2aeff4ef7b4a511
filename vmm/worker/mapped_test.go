package worker

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"instarfs/errcode"
	"instarfs/proto"
)

// mappedFile is an opened file of size bytes whose byte at offset i is
// byte(i/4096 + 1), as the mapper sees images.
func mappedFile(t *testing.T, size int64) *opened {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i/4096 + 1)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &opened{ref: proto.ImageRef{Name: "f"}, file: f, size: size, format: "raw"}
}

// TestMapperWindows: get shows a file's bytes, at most to its window's end;
// windows that are held stay, released ones make room within the budget,
// and nothing is shown where no room is left.
func TestMapperWindows(t *testing.T) {
	defer func(size, budget int64) { windowSize, mapBudget = size, budget }(windowSize, mapBudget)
	windowSize, mapBudget = 64<<10, 128<<10
	o := mappedFile(t, 256<<10)
	m := newMapper()
	defer m.close()
	want := func(host, n int64) []byte {
		b := make([]byte, n)
		o.file.ReadAt(b, host)
		return b
	}

	b, w1 := m.get(o, 60<<10, 8<<10) // crosses the first window's end
	if !bytes.Equal(b, want(60<<10, 4<<10)) {
		t.Fatalf("across a window's end: %d bytes", len(b))
	}
	b, w2 := m.get(o, 64<<10, 8<<10)
	if !bytes.Equal(b, want(64<<10, 8<<10)) {
		t.Fatalf("the second window: %d bytes", len(b))
	}
	if b, _ := m.get(o, 128<<10, 4096); b != nil {
		t.Fatalf("a third window beyond the budget, both others held: %d bytes", len(b))
	}
	m.put(w1)
	b, w3 := m.get(o, 200<<10, 56<<10) // to the file's end
	if !bytes.Equal(b, want(200<<10, 56<<10)) || m.wins[winKey{o, 0}] != nil {
		t.Fatalf("a window in place of a released one: %d bytes, first window still mapped: %v", len(b), m.wins[winKey{o, 0}] != nil)
	}
	if b, _ := m.get(o, 256<<10, 1); b != nil {
		t.Fatal("a byte past the file's end shown")
	}
	m.put(w2)
	m.put(w3)
	if len(m.idle) != 2 || m.mapped != 128<<10 {
		t.Errorf("after releasing all: %d idle windows, %d bytes mapped", len(m.idle), m.mapped)
	}
}

// TestMapperDropsPerHold: what a hold showed leaves the resident set when it
// is put back, though another hold keeps its window mapped; holds of one
// window merge.
func TestMapperDropsPerHold(t *testing.T) {
	defer func(size int64) { windowSize = size }(windowSize)
	windowSize = 16 << 20
	o := mappedFile(t, 16<<20)
	m := newMapper()
	defer m.close()
	read := func(b []byte) (sum int) {
		for i := 0; i < len(b); i += 4096 {
			sum += int(b[i])
		}
		return sum
	}
	a, h1 := m.get(o, 0, 4<<20)
	b, h2 := m.get(o, 8<<20, 4<<20)
	sink = read(a) + read(b)
	if got := residentKiB(t, a); got < 4<<10 {
		t.Fatalf("%d KiB resident after reading 4 MiB", got)
	}
	held := addHold(addHold(nil, h1), h2)
	if len(held) != 1 || held[0].gets != 2 || held[0].lo != 0 || held[0].hi != 12<<20 {
		t.Fatalf("merged holds: %+v", held)
	}
	_, h3 := m.get(o, 12<<20, 4096) // another chunk's
	m.put(held[0])
	if got := residentKiB(t, a); got > 4 {
		t.Errorf("%d KiB still resident after the hold was put back", got)
	}
	if h3.w.refs != 1 || m.wins[winKey{o, 0}] == nil {
		t.Errorf("the window another hold keeps: %d gets, mapped %v", h3.w.refs, m.wins[winKey{o, 0}] != nil)
	}
	m.put(h3)
	if len(m.idle) != 1 {
		t.Errorf("%d idle windows once all holds are back", len(m.idle))
	}
}

var sink int

// residentKiB returns the resident size of the mapping that holds b, from
// /proc/self/smaps.
func residentKiB(t *testing.T, b []byte) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip(err)
	}
	addr := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		var lo, hi uint64
		if n, _ := fmt.Sscanf(line, "%x-%x", &lo, &hi); n == 2 && strings.Contains(line, " ") && !strings.HasSuffix(strings.Fields(line)[0], ":") {
			in = addr >= lo && addr < hi
			continue
		}
		if f := strings.Fields(line); in && len(f) == 3 && f[0] == "Rss:" {
			kib, _ := strconv.Atoi(f[1])
			return kib
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return 0
}

// TestMapperReadShrunkFile: a file cut while its window is mapped faults on
// the lost pages; read makes that a READ_FAILED error that names the file.
// Another fault stays a panic.
func TestMapperReadShrunkFile(t *testing.T) {
	o := mappedFile(t, 1<<20)
	m := newMapper()
	defer m.close()
	b, w := m.get(o, 512<<10, 64<<10)
	if b == nil {
		t.Fatal("no window")
	}
	defer m.put(w)
	if err := os.Truncate(o.file.Name(), 4096); err != nil {
		t.Fatal(err)
	}
	var sum int
	err := m.read(func() error {
		for _, c := range b {
			sum += int(c)
		}
		return nil
	})
	if errcode.Of(err) != errcode.ReadFailed || !strings.Contains(err.Error(), "'f'") {
		t.Fatalf("reading lost pages: %v (sum %d)", err, sum)
	}

	defer func() {
		if r := recover(); r == nil {
			t.Error("a fault outside the windows did not panic")
		}
	}()
	var nowhere *[4096]byte
	m.read(func() error {
		sum += int(nowhere[100])
		return nil
	})
}
