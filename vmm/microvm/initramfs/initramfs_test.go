package initramfs

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

type entry struct {
	name string
	mode uint32
	data string
	rdev uint32
}

// readBack parses a newc archive independently of the writer.
func readBack(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d: %q", off, b[off:off+6])
		}
		mode, size, major, minor, namesize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(namesize)-1])
		off = align(off + 110 + int(namesize))
		data := string(b[off : off+int(size)])
		off = align(off + int(size))
		if name == trailer {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, entry{name, mode, data, major<<8 | minor})
	}
}

func build(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.CharDev("/dev/console", 0o600, 5, 1)
	w.File("/init", 0o755, []byte("#!binary"))
	w.File("lib/modules/a.ko", 0o644, []byte("odd"))
	w.File("/instarfs/request.json", 0o644, []byte(`{"op":"noop"}`))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadBack(t *testing.T) {
	got := readBack(t, build(t))
	want := []entry{
		{"dev", ModeDir | 0o755, "", 0},
		{"dev/console", ModeCharDev | 0o600, "", 5<<8 | 1},
		{"init", ModeRegular | 0o755, "#!binary", 0},
		{"lib", ModeDir | 0o755, "", 0},
		{"lib/modules", ModeDir | 0o755, "", 0},
		{"lib/modules/a.ko", ModeRegular | 0o644, "odd", 0},
		{"instarfs", ModeDir | 0o755, "", 0},
		{"instarfs/request.json", ModeRegular | 0o644, `{"op":"noop"}`, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries %v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestTwice(t *testing.T) {
	w := NewWriter(&bytes.Buffer{})
	w.File("a", 0o644, nil)
	if err := w.File("/a", 0o644, nil); err == nil {
		t.Fatal("adding a name twice succeeded")
	}
}

// TestCpioReadsIt uses Debian's cpio as an oracle.
func TestCpioReadsIt(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio is not installed (make test installs it)")
	}
	cmd := exec.Command("cpio", "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(build(t))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	want := "dev\ndev/console\ninit\nlib\nlib/modules\nlib/modules/a.ko\ninstarfs\ninstarfs/request.json\n"
	if string(out) != want {
		t.Fatalf("cpio -t lists\n%s\nwant\n%s", out, want)
	}
	cmd = exec.Command("cpio", "-i", "--quiet", "--to-stdout", "lib/modules/a.ko")
	cmd.Stdin = bytes.NewReader(build(t))
	out, err = cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) != "odd" {
		t.Fatalf("cpio -i a.ko: %q, %v", out, err)
	}
}
