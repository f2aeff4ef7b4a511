package mapsvg

import (
	"bytes"
	"encoding/xml"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"instarfs/proto"
)

// doc is what a test reads back from a picture.
type doc struct {
	paths  map[string]string // fill → d, per provider path
	titles []string          // every <title>
	texts  []string          // every <text>
}

func parse(t *testing.T, svg []byte) doc {
	t.Helper()
	d := doc{paths: map[string]string{}}
	dec := xml.NewDecoder(bytes.NewReader(svg))
	var stack []string
	var fill, path string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			stack = append(stack, tok.Name.Local)
			if tok.Name.Local == "path" {
				for _, a := range tok.Attr {
					switch a.Name.Local {
					case "fill":
						fill = a.Value
					case "d":
						path = a.Value
					}
				}
				if _, dup := d.paths[fill]; dup && fill != "url(#mixed)" {
					t.Errorf("two paths fill %s", fill)
				}
				d.paths[fill] = path
			}
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) == 0 {
				continue
			}
			switch stack[len(stack)-1] {
			case "title":
				d.titles = append(d.titles, string(tok))
			case "text":
				d.texts = append(d.texts, string(tok))
			}
		}
	}
	return d
}

var segment = regexp.MustCompile(`M(\d+) (\d+)h(\d+)v\d+h-\d+z`)

// cellsOf returns how many cells a path covers.
func cellsOf(d string) int {
	n := 0
	for _, m := range segment.FindAllStringSubmatch(d, -1) {
		w, _ := strconv.Atoi(m[3])
		n += w
	}
	return n
}

func entry(start, length int64, depth int, present, zero, data bool) proto.MapEntry {
	return proto.MapEntry{Start: start, Length: length, Depth: depth, Present: present, Zero: zero, Data: data}
}

const mib = 1 << 20

func TestRenderChain(t *testing.T) {
	in := Input{
		Image: "top.qcow2", Format: "qcow2", VirtualSize: 64 * mib,
		Members: []string{"top.qcow2", "mid.qcow2", "sub/base & <old>.qcow2"},
		Entries: []proto.MapEntry{
			entry(0, 16*mib, 0, true, false, true),
			entry(16*mib, 16*mib, 1, true, false, true),
			entry(32*mib, 8*mib, 2, true, false, true),
			entry(40*mib, 8*mib, 1, true, true, false),
			entry(48*mib, 16*mib, 2, false, true, false),
		},
	}
	svg := Render(in)
	d := parse(t, svg)
	// 64 MiB is 128 Ki cells of 512 bytes: four rows of 1024 cells, 16 KiB each.
	total := 0
	for fill, p := range d.paths {
		if fill != "url(#mixed)" {
			total += cellsOf(p)
		}
	}
	if total != 4*Columns {
		t.Errorf("providers cover %d cells, want %d", total, 4*Columns)
	}
	want := map[string]int{palette[0]: 1024, palette[1]: 1024, palette[2]: 512, zeroColour: 512, emptyColour: 1024}
	for fill, n := range want {
		if got := cellsOf(d.paths[fill]); got != n {
			t.Errorf("%s covers %d cells, want %d", fill, got, n)
		}
	}
	if _, ok := d.paths["url(#mixed)"]; ok {
		t.Error("aligned runs hatched")
	}
	legend := strings.Join(d.texts, "\n")
	for _, s := range []string{
		"depth 0, top image: top.qcow2 — 16 MiB, 25.0%",
		"depth 1, backing image: mid.qcow2 — 16 MiB, 25.0%",
		"depth 2, backing image: sub/base & <old>.qcow2 — 8 MiB, 12.5%",
		"zeros (zero clusters) — 8 MiB, 12.5%",
		"unallocated (reads as zeros) — 16 MiB, 25.0%",
		"top.qcow2 — qcow2, virtual size 64 MiB; top.qcow2 16 MiB; mid.qcow2 16 MiB; base & <old>.qcow2 8 MiB",
	} {
		if !strings.Contains(legend, s) {
			t.Errorf("legend lacks %q:\n%s", s, legend)
		}
	}
	// Every provider drawn has a title naming it.
	titles := strings.Join(d.titles, "\n")
	for _, name := range in.Members {
		if !strings.Contains(titles, name) {
			t.Errorf("no title names %s", name)
		}
	}
}

func TestRenderSmallImageOneRow(t *testing.T) {
	in := Input{Image: "a.raw", Format: "raw", VirtualSize: 4096, Members: []string{"a.raw"},
		Entries: []proto.MapEntry{entry(0, 4096, 0, true, false, true)}}
	d := parse(t, Render(in))
	if got := cellsOf(d.paths[palette[0]]); got != 1024 {
		t.Errorf("one row of 4 bytes per cell: %d cells", got)
	}
	if !strings.Contains(strings.Join(d.texts, "\n"), "4 B per cell") {
		t.Errorf("cell size not stated: %q", d.texts)
	}
}

func TestRenderEmpty(t *testing.T) {
	d := parse(t, Render(Input{Image: "z.qcow2", Format: "qcow2", Members: []string{"z.qcow2"}}))
	for fill, p := range d.paths {
		if cellsOf(p) != 0 {
			t.Errorf("a 0-byte image draws %s", fill)
		}
	}
}

// TestRenderMixedCells: a cell no provider dominates is hatched and takes the
// provider with the most bytes.
func TestRenderMixedCells(t *testing.T) {
	size := int64(MaxRows * Columns * 1024) // four rows of 1 KiB cells
	var es []proto.MapEntry
	for off := int64(0); off < size; off += 1024 {
		es = append(es, entry(off, 600, 0, true, false, true), entry(off+600, 424, 1, true, false, true))
	}
	d := parse(t, Render(Input{Image: "t", Format: "qcow2", VirtualSize: size, Members: []string{"t", "b"}, Entries: es}))
	if cellsOf(d.paths[palette[0]]) != MaxRows*Columns || cellsOf(d.paths["url(#mixed)"]) != MaxRows*Columns {
		t.Errorf("want every cell top-dominated and hatched: top %d, hatched %d", cellsOf(d.paths[palette[0]]), cellsOf(d.paths["url(#mixed)"]))
	}
	if len(segment.FindAllString(d.paths[palette[0]], -1)) != MaxRows {
		t.Error("equal neighbouring cells are not merged into one run")
	}
}

// TestRenderBounded: a 1 TiB image with millions of tiny extents, and the
// worst picture (every cell a provider other than its neighbours', every cell
// hatched, seventeen members with the longest names of markup characters),
// stay under 256 KiB.
func TestRenderBounded(t *testing.T) {
	const tib = int64(1) << 40
	members := make([]string, 17)
	for i := range members {
		members[i] = strings.Repeat(`"<&`, 340) + strconv.Itoa(i)
	}
	many := func() []proto.MapEntry {
		var es []proto.MapEntry
		step := tib / (1 << 20) // 2 Mi extents of 512 KiB
		for i, off := 0, int64(0); off < tib; i, off = i+1, off+step {
			es = append(es, entry(off, step/2, i%17, true, false, true), entry(off+step/2, step/2, (i+5)%17, true, false, true))
		}
		return es
	}
	worst := func() []proto.MapEntry {
		var es []proto.MapEntry
		cell := tib / (MaxRows * Columns)
		for c := int64(0); c < MaxRows*Columns; c++ {
			major := cell * 6 / 10
			es = append(es, entry(c*cell, major, int(c%17), true, false, true), entry(c*cell+major, cell-major, int((c+1)%17), true, false, true))
		}
		return es
	}
	for name, es := range map[string][]proto.MapEntry{"millions of extents": many(), "worst": worst()} {
		svg := Render(Input{Image: members[0], Format: "qcow2", VirtualSize: tib, Members: members, Entries: es})
		if len(svg) > 256<<10 {
			t.Fatalf("%s: %d bytes", name, len(svg))
		}
		d := parse(t, svg)
		rows := 0
		for _, s := range d.texts {
			if strings.Contains(s, "depth ") || strings.Contains(s, "zeros") || strings.Contains(s, "unallocated") {
				rows++
			}
		}
		if rows != 19 {
			t.Errorf("%s: %d legend rows, want 19", name, rows)
		}
		t.Logf("%s: %d extents, %d bytes", name, len(es), len(svg))
	}
}

// TestSharesSumToVirtualSize: the legend's shares add up to the image.
func TestSharesSumToVirtualSize(t *testing.T) {
	in := Input{VirtualSize: 10*mib + 512, Members: []string{"a", "b"}, Entries: []proto.MapEntry{
		entry(0, 3*mib, 0, true, false, true), entry(3*mib, mib+512, 1, true, true, false),
		entry(4*mib+512, 6*mib, 1, false, false, false)}}
	lay := layoutFor(in.VirtualSize)
	_, shares := cells(&in, lay)
	var sum int64
	for _, s := range shares {
		sum += s
	}
	if sum != in.VirtualSize {
		t.Fatalf("shares sum to %d, want %d", sum, in.VirtualSize)
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		`a<b>&"c'`:   "a&lt;b&gt;&amp;&quot;c&apos;",
		"x\x01y\x7f": "x\uFFFDy\x7f",
		"bad\xffutf": "bad\uFFFDutf",
		"tab\tok":    "tab\tok",
	} {
		if got := esc(in); got != want {
			t.Errorf("esc(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 512: "512 B", 65536: "64 KiB", 1536 * 1024 * 1024: "1.5 GiB", 1 << 40: "1 TiB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}
