package integration

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// svgProviders are the colours the picture gives each provider: the
// Okabe–Ito palette by depth, grey for zeros, white for unallocated space.
var svgProviders = []string{"#0072B2", "#E69F00", "#009E73", "#CC79A7"}

const (
	svgZero  = "#BBBBBB"
	svgEmpty = "#FFFFFF"
)

// TestMapSVG draws real chains with `instarfs map --output=svg`, checks that
// the document is valid XML (xmllint), under 256 KiB, with a legend naming
// every member, and renders it with rsvg-convert: in the PNG, the middle of
// every map row wide enough to fill whole cells has the colour of what
// `map --output=json` says provides it.
func TestMapSVG(t *testing.T) {
	for _, tool := range []string{"xmllint", "rsvg-convert"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found; `make test` installs it", tool)
		}
	}
	cases := []struct {
		name, file, setup string
		members           []string
	}{
		{"three-deep", "top.qcow2", `
mk base.qcow2 256M; QI -c 'write -P 1 0 64M' -c 'write -P 2 128M 32M' base.qcow2
mk -b base.qcow2 -F qcow2 mid.qcow2; QI -c 'write -P 3 16M 24M' -c 'write -z 100M 20M' mid.qcow2
mk -b mid.qcow2 -F qcow2 top.qcow2; QI -c 'write -P 4 30M 20M' -c 'write -P 5 200M 1M' top.qcow2
`, []string{"top.qcow2", "mid.qcow2", "base.qcow2"}},
		{"compressed", "c.qcow2", `
mk plain.qcow2 64M; QI -c 'write -P 7 0 8M' -c 'write -P 8 40M 4M' plain.qcow2
qemu-img convert -c -O qcow2 plain.qcow2 c.qcow2
`, []string{"c.qcow2"}},
		{"zero-clusters", "z.qcow2", `
mk z.qcow2 32M; QI -c 'write -P 9 0 4M' -c 'write -z 8M 8M' -c 'write -P 9 24M 1M' z.qcow2
`, []string{"z.qcow2"}},
		{"one-tebibyte", "big.qcow2", `
mk big.qcow2 1T; QI -c 'write -P 1 0 1M' -c 'write -P 2 512G 64M' -c 'write -z 768G 1G' big.qcow2
`, []string{"big.qcow2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			rbSh(t, dir, c.setup)
			r := runOp(t, dir, nil, "map", "--output=svg", c.file)
			if r.code != 0 {
				t.Fatalf("map --output=svg: exit %d\n%s", r.code, r.stderr)
			}
			svg := r.stdout
			if len(svg) > 256<<10 {
				t.Errorf("%d bytes", len(svg))
			}
			svgPath := filepath.Join(dir, "map.svg")
			if err := os.WriteFile(svgPath, svg, 0o644); err != nil {
				t.Fatal(err)
			}
			if x := execIn(t, dir, "xmllint", "--noout", svgPath); x.code != 0 {
				t.Fatalf("xmllint: %s", x.stderr)
			}
			for i, m := range c.members {
				want := fmt.Sprintf("depth %d, ", i) + map[bool]string{true: "top image: ", false: "backing image: "}[i == 0] + m
				if !bytes.Contains(svg, []byte(want)) {
					t.Errorf("legend lacks %q", want)
				}
			}
			j := runOp(t, dir, nil, "map", "--output=json", c.file)
			var rows []struct {
				Start, Length       int64
				Depth               int
				Present, Zero, Data bool
			}
			if err := json.Unmarshal(j.stdout, &rows); err != nil {
				t.Fatalf("map json: %v", err)
			}
			var size int64
			for _, row := range rows {
				size += row.Length
			}
			pngPath := filepath.Join(dir, "map.png")
			if x := execIn(t, dir, "rsvg-convert", "-o", pngPath, svgPath); x.code != 0 {
				t.Fatalf("rsvg-convert: %s", x.stderr)
			}
			frames := svgRowFrames(t, svg)
			cellBytes := (size + int64(len(frames)*1024) - 1) / int64(len(frames)*1024)
			f, err := os.Open(pngPath)
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			checked := 0
			for _, row := range rows {
				first, last := (row.Start+cellBytes-1)/cellBytes, (row.Start+row.Length)/cellBytes-1
				if last < first {
					continue // covers no whole cell
				}
				want := svgEmpty
				switch {
				case row.Present && row.Zero:
					want = svgZero
				case row.Present:
					want = svgProviders[row.Depth]
				}
				mid := (first + last) / 2
				fr := frames[mid/1024]
				x, y := fr[0]+int(mid%1024), fr[1]+14
				r, g, b, _ := img.At(x, y).RGBA()
				if got := fmt.Sprintf("#%02X%02X%02X", r>>8, g>>8, b>>8); got != want {
					t.Errorf("cell %d (offset %d, depth %d zero %v present %v) is %s in the PNG, want %s", mid, mid*cellBytes, row.Depth, row.Zero, row.Present, got, want)
				}
				checked++
			}
			if checked == 0 {
				t.Fatal("no map row was checked in the picture")
			}
		})
	}
}

// svgRowFrames returns the top-left corner of each row of cells: the
// outlined rectangles the picture draws around them.
func svgRowFrames(t *testing.T, svg []byte) [][2]int {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(svg))
	var frames [][2]int
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Local != "rect" {
			continue
		}
		attr := map[string]string{}
		for _, a := range se.Attr {
			attr[a.Name.Local] = a.Value
		}
		if attr["fill"] != "none" || !strings.HasPrefix(attr["stroke"], "#") {
			continue
		}
		x, _ := strconv.Atoi(attr["x"])
		y, _ := strconv.Atoi(attr["y"])
		frames = append(frames, [2]int{x, y})
	}
	if len(frames) == 0 {
		t.Fatal("no rows in the picture")
	}
	return frames
}
