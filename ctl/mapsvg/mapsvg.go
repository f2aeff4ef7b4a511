// Package mapsvg draws an image's allocation map as an SVG picture: the guest
// address space left to right, wrapped into rows, each stretch coloured by
// what provides it — the top image, a backing image by depth, zeros, or
// nothing (unallocated) — with a legend that names every provider and its
// share of the virtual size.
//
// The picture is made from the map rows a worker computed (proto.MapEntry); no
// image byte is read here. Its size is bounded whatever the map: the address
// space is cut into at most Columns × MaxRows cells, each cell takes the
// provider that covers most of it, and a cell several providers share is
// hatched. Colours come from the Okabe–Ito palette, which stays distinct for
// the common colour-vision deficiencies, and the legend says in words what
// each colour means.
package mapsvg

import (
	"bytes"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"instarfs/proto"
)

// Geometry of the picture, in SVG user units (pixels at 100%).
const (
	Columns   = 1024 // cells per row
	MaxRows   = 4    // rows at most; small images use fewer
	rowHeight = 28
	rowGap    = 6
	margin    = 12
	headerH   = 42
	legendRow = 20
	// minCellBytes is the least a cell covers: an image smaller than
	// Columns × minCellBytes is drawn on one row with fewer bytes per cell
	// than that only when it is smaller than Columns bytes.
	minCellBytes = 512
	// mixedBelow is the share of a cell its dominant provider must reach for
	// the cell not to be hatched.
	mixedBelow = 0.9
)

// palette is Okabe and Ito's colour-blind-safe set, top image first. Members
// deeper than it has colours reuse it with white dots (pattern "dN").
var palette = []string{"#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"}

const (
	zeroColour  = "#BBBBBB"
	emptyColour = "#FFFFFF"
)

// Input is what the picture shows.
type Input struct {
	Image       string   // the image's name, for the header
	Format      string   // its format
	VirtualSize int64    // its virtual size
	Members     []string // the chain's image names, top first (index = depth)
	Entries     []proto.MapEntry
}

// provider indices beyond the members.
func zeroIndex(in *Input) int  { return len(in.Members) }
func emptyIndex(in *Input) int { return len(in.Members) + 1 }

// providerOf says which provider a map row stands for.
func providerOf(in *Input, e proto.MapEntry) int {
	switch {
	case !e.Present:
		return emptyIndex(in)
	case e.Zero:
		return zeroIndex(in)
	case e.Depth >= 0 && e.Depth < len(in.Members):
		return e.Depth
	}
	return emptyIndex(in)
}

// layout is how the address space is cut into cells.
type layout struct {
	rows      int
	cellBytes int64
}

func layoutFor(size int64) layout {
	if size <= 0 {
		return layout{rows: 1, cellBytes: 1}
	}
	rows := int((size + Columns*minCellBytes - 1) / (Columns * minCellBytes))
	rows = max(1, min(rows, MaxRows))
	cells := int64(rows * Columns)
	return layout{rows: rows, cellBytes: max(1, (size+cells-1)/cells)}
}

// cell is one drawn cell: its dominant provider and whether others share it.
type cell struct {
	provider int
	mixed    bool
	used     bool // the cell lies (at least partly) inside the image
}

// cells sums each provider's bytes per cell and keeps the dominant one. It
// walks the rows once and touches each cell a row overlaps: its cost is the
// number of rows plus the number of cells.
func cells(in *Input, lay layout) (out []cell, shares []int64) {
	n := lay.rows * Columns
	nprov := len(in.Members) + 2
	acc := make([]int64, n*nprov) // at most 4096 × 19 counters
	shares = make([]int64, nprov)
	for _, e := range in.Entries {
		if e.Length <= 0 || e.Start < 0 || e.Start >= in.VirtualSize {
			continue
		}
		end := min(e.Start+e.Length, in.VirtualSize)
		p := providerOf(in, e)
		shares[p] += end - e.Start
		for off := e.Start; off < end; {
			c := off / lay.cellBytes
			cellEnd := min((c+1)*lay.cellBytes, end)
			acc[int(c)*nprov+p] += cellEnd - off
			off = cellEnd
		}
	}
	out = make([]cell, n)
	for i := range out {
		start := int64(i) * lay.cellBytes
		if start >= in.VirtualSize {
			continue
		}
		width := min(lay.cellBytes, in.VirtualSize-start)
		best, total := 0, int64(0)
		row := acc[i*nprov : (i+1)*nprov]
		for p, v := range row {
			total += v
			if v > row[best] {
				best = p
			}
		}
		if total == 0 {
			best = emptyIndex(in)
		}
		out[i] = cell{provider: best, mixed: float64(row[best]) < mixedBelow*float64(width), used: true}
	}
	return out, shares
}

// Render draws the picture.
func Render(in Input) []byte {
	lay := layoutFor(in.VirtualSize)
	cs, shares := cells(&in, lay)
	nprov := len(in.Members) + 2

	gridTop := margin + headerH
	gridH := lay.rows*(rowHeight+rowGap) - rowGap
	legendTop := gridTop + gridH + 16
	width := Columns + 2*margin
	height := legendTop + (nprov+1)*legendRow + margin

	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-labelledby="t">
`, width, height, width, height)
	fmt.Fprintf(&b, "<title id=\"t\">Allocation map of %s</title>\n", esc(shorten(in.Image)))
	b.WriteString(`<defs><pattern id="mixed" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="2" height="6" fill="#000" fill-opacity="0.55"/></pattern>`)
	for p := len(palette); p < len(in.Members); p++ {
		fmt.Fprintf(&b, `<pattern id="d%d" width="8" height="8" patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="%s"/><circle cx="4" cy="4" r="1.8" fill="#FFFFFF"/></pattern>`, p, palette[p%len(palette)])
	}
	b.WriteString(`</defs>
<style>text{font-family:sans-serif;font-size:13px;fill:#222}.h{font-size:15px;font-weight:bold}</style>
<rect width="100%" height="100%" fill="#FFFFFF"/>
`)
	fmt.Fprintf(&b, "<text class=\"h\" x=\"%d\" y=\"%d\">%s</text>\n", margin, margin+16, esc(header(&in, shares)))
	fmt.Fprintf(&b, "<text x=\"%d\" y=\"%d\">%s per cell, %d cells per row; hatched cells hold more than one provider</text>\n",
		margin, margin+31, humanSize(lay.cellBytes), Columns)

	// One path per provider, and one for the hatching: the document grows
	// with the number of runs of equal cells, which is bounded by the cells.
	paths := make([]strings.Builder, nprov)
	var hatch strings.Builder
	for r := 0; r < lay.rows; r++ {
		y := gridTop + r*(rowHeight+rowGap)
		for c := 0; c < Columns; {
			i := r*Columns + c
			if !cs[i].used {
				break
			}
			j := c + 1
			for j < Columns && cs[r*Columns+j].used && cs[r*Columns+j].provider == cs[i].provider {
				j++
			}
			fmt.Fprintf(&paths[cs[i].provider], "M%d %dh%dv%dh-%dz", margin+c, y, j-c, rowHeight, j-c)
			for k := c; k < j; {
				if !cs[r*Columns+k].mixed {
					k++
					continue
				}
				m := k + 1
				for m < j && cs[r*Columns+m].mixed {
					m++
				}
				fmt.Fprintf(&hatch, "M%d %dh%dv%dh-%dz", margin+k, y, m-k, rowHeight, m-k)
				k = m
			}
			c = j
		}
		// The row's frame, so unallocated space shows as an outlined blank.
		used := 0
		for used < Columns && cs[r*Columns+used].used {
			used++
		}
		fmt.Fprintf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\" stroke-width=\"1\"/>\n", margin, y, used, rowHeight)
	}
	for p := 0; p < nprov; p++ {
		if paths[p].Len() == 0 {
			continue
		}
		fmt.Fprintf(&b, "<path fill=\"%s\" d=\"%s\"><title>%s</title></path>\n", colour(&in, p), paths[p].String(), esc(label(&in, p, shares)))
	}
	if hatch.Len() > 0 {
		fmt.Fprintf(&b, "<path fill=\"url(#mixed)\" d=\"%s\"><title>cells shared by more than one provider</title></path>\n", hatch.String())
	}

	// The legend: every provider in words, with its share.
	for p := 0; p < nprov; p++ {
		y := legendTop + p*legendRow
		fmt.Fprintf(&b, "<g><title>%s</title><rect x=\"%d\" y=\"%d\" width=\"14\" height=\"14\" fill=\"%s\" stroke=\"#444\"/><text x=\"%d\" y=\"%d\">%s</text></g>\n",
			esc(label(&in, p, shares)), margin, y, colour(&in, p), margin+22, y+12, esc(label(&in, p, shares)))
	}
	y := legendTop + nprov*legendRow
	fmt.Fprintf(&b, "<g><rect x=\"%d\" y=\"%d\" width=\"14\" height=\"14\" fill=\"url(#mixed)\" stroke=\"#444\"/><text x=\"%d\" y=\"%d\">hatched: no provider covers %d%% of the cell</text></g>\n",
		margin, y, margin+22, y+12, int(mixedBelow*100))
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func colour(in *Input, p int) string {
	switch p {
	case zeroIndex(in):
		return zeroColour
	case emptyIndex(in):
		return emptyColour
	}
	if p >= len(palette) {
		return fmt.Sprintf("url(#d%d)", p)
	}
	return palette[p]
}

// label names provider p and its share of the virtual size.
func label(in *Input, p int, shares []int64) string {
	var what string
	switch p {
	case zeroIndex(in):
		what = "zeros (zero clusters)"
	case emptyIndex(in):
		what = "unallocated (reads as zeros)"
	case 0:
		what = fmt.Sprintf("depth 0, top image: %s", shorten(in.Members[0]))
	default:
		what = fmt.Sprintf("depth %d, backing image: %s", p, shorten(in.Members[p]))
	}
	return fmt.Sprintf("%s — %s, %s", what, humanSize(shares[p]), percent(shares[p], in.VirtualSize))
}

// header is the one-line summary: image, format, virtual size, and the data
// each member provides.
func header(in *Input, shares []int64) string {
	parts := []string{fmt.Sprintf("%s — %s, virtual size %s", shorten(in.Image), in.Format, humanSize(in.VirtualSize))}
	for d, name := range in.Members {
		parts = append(parts, fmt.Sprintf("%s %s", shorten(baseName(name)), humanSize(shares[d])))
	}
	return strings.Join(parts, "; ")
}

// maxName is the most characters of a name the picture shows; longer names
// keep their start and end. It keeps the legend, and so the document, small
// whatever the names (a backing name may be 1023 bytes long).
const maxName = 100

func shorten(name string) string {
	r := []rune(name)
	if len(r) <= maxName {
		return name
	}
	return string(r[:maxName/2-1]) + "…" + string(r[len(r)-maxName/2:])
}

func baseName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 && i+1 < len(name) {
		return name[i+1:]
	}
	return name
}

func percent(part, whole int64) string {
	if whole <= 0 {
		return "0%"
	}
	v := 100 * float64(part) / float64(whole)
	switch {
	case v == 0 || v == 100:
		return fmt.Sprintf("%.0f%%", v)
	case v < 0.1:
		return "<0.1%"
	}
	return fmt.Sprintf("%.1f%%", math.Min(v, 99.9))
}

// humanSize prints a byte count as qemu-img prints sizes: "0 B", "512 B",
// "64 KiB", "1.5 GiB".
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if u == 0 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f %s", v, units[u])
	}
	return fmt.Sprintf("%.3g %s", v, units[u])
}

// esc makes s safe as XML character data and attribute text: markup
// characters escaped, and characters XML 1.0 forbids (controls, invalid
// UTF-8) replaced.
func esc(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size <= 1:
			b.WriteRune('\uFFFD')
		case r == '&':
			b.WriteString("&amp;")
		case r == '<':
			b.WriteString("&lt;")
		case r == '>':
			b.WriteString("&gt;")
		case r == '"':
			b.WriteString("&quot;")
		case r == '\'':
			b.WriteString("&apos;")
		case r < 0x20 && r != '\t', r == 0xFFFE, r == 0xFFFF:
			b.WriteRune('\uFFFD')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
