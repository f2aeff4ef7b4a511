package worker

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
