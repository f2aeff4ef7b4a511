package integration

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestInfoMatchesQemu compares `instarfs info --output=json` with qemu-img's, with
// and without --backing-chain, on every good image.
func TestInfoMatchesQemu(t *testing.T) {
	for _, e := range entries("good") {
		for _, chain := range []bool{false, true} {
			args := []string{"info", "--output=json"}
			if chain {
				args = append(args, "--backing-chain")
			}
			args = append(args, e.Name)
			t.Run(strings.Join(args[1:], " "), func(t *testing.T) {
				want := decodeJSON(t, "qemu-img", qemuImg(t, imagesDir, args...))
				got := decodeJSON(t, "instarfs", instarfs(t, e, args...))
				if !reflect.DeepEqual(normaliseInfo(got), normaliseInfo(want)) {
					t.Errorf("info differs\n got: %s\nwant: %s", js(got), js(want))
				}
			})
		}
	}
}

// normaliseInfo drops what legitimately differs between two tools reading the
// same file: nothing, today, but actual-size of files that another test may be
// writing to. It is kept as the one place to say so.
func normaliseInfo(v any) any { return v }

// TestMapMatchesQemu compares `instarfs map --output=json` with qemu-img's, row for
// row, and the human form line for line.
func TestMapMatchesQemu(t *testing.T) {
	for _, e := range entries("good") {
		t.Run(e.Name, func(t *testing.T) {
			want := qemuImg(t, imagesDir, "map", "--output=json", e.Name)
			got := instarfs(t, e, "map", "--output=json", e.Name)
			if got.code != 0 || !bytes.Equal(got.stdout, want.stdout) {
				t.Errorf("map --output=json differs (exit %d, stderr %s)\n got: %s\nwant: %s", got.code, got.stderr, got.stdout, want.stdout)
			}
			wantH := qemuImg(t, imagesDir, "map", e.Name)
			gotH := instarfs(t, e, "map", e.Name)
			if (wantH.code == 0) != (gotH.code == 0) || wantH.code == 0 && !bytes.Equal(gotH.stdout, wantH.stdout) {
				t.Errorf("map differs (exit %d vs %d)\n got: %s\nwant: %s", gotH.code, wantH.code, gotH.stdout, wantH.stdout)
			}
		})
	}
}

// TestCheckMatchesQemu compares `instarfs check` with qemu-img's on good and
// damaged images: the same JSON, and the same exit status.
func TestCheckMatchesQemu(t *testing.T) {
	for _, kind := range []string{"good", "damaged"} {
		for _, e := range entries(kind) {
			t.Run(e.Name, func(t *testing.T) {
				want := qemuImg(t, imagesDir, "check", "--output=json", e.Name)
				got := instarfs(t, e, "check", "--output=json", e.Name)
				if got.code != want.code {
					t.Errorf("exit status %d, qemu-img %d\nstderr: %s", got.code, want.code, got.stderr)
				}
				if want.code == 63 && (len(got.stdout) != 0 || !bytes.Contains(got.stderr, []byte("does not support checks"))) {
					t.Errorf("no checks for this format: qemu-img prints nothing on stdout; instarfs printed %q, %q", got.stdout, got.stderr)
				}
				if want.code == 63 || want.code == 1 {
					return // no checks for this format, or the check itself failed: no report
				}
				w, g := decodeJSON(t, "qemu-img", want), decodeJSON(t, "instarfs", got)
				if !reflect.DeepEqual(g, w) {
					t.Errorf("check differs\n got: %s\nwant: %s", js(g), js(w))
				}
			})
		}
	}
}

// TestHostileImagesRefused runs every command on images whose backing or extent
// reaches outside the image directory: each must fail with the named error and
// never print the secret's contents.
func TestHostileImagesRefused(t *testing.T) {
	for _, e := range entries("hostile") {
		for _, cmd := range [][]string{
			{"info", "--backing-chain", "--output=json"},
			{"map", "--output=json"},
			{"check", "--output=json"},
		} {
			t.Run(e.Name+" "+cmd[0], func(t *testing.T) {
				r := instarfs(t, e, append(cmd, e.Name)...)
				if m := e.Notes["marker"]; m != "" && (bytes.Contains(r.stdout, []byte(m)) || bytes.Contains(r.stderr, []byte(m))) {
					t.Fatalf("the secret's contents appear in the output:\n%s\n%s", r.stdout, r.stderr)
				}
				// check reads the image alone, so only refusals of the image
				// itself (encryption, data files, extent files) stop it.
				refusesItself := strings.HasPrefix(e.Notes["code"], "QCOW2_") || strings.HasPrefix(e.Notes["code"], "VMDK_")
				if (cmd[0] != "check" || refusesItself) && r.code == 0 {
					t.Fatalf("%s succeeded on a hostile image:\n%s", cmd[0], r.stdout)
				}
				if code := e.Notes["code"]; r.code != 0 && !bytes.Contains(r.stderr, []byte(code)) {
					t.Errorf("exit %d; stderr does not name %s:\n%s", r.code, code, r.stderr)
				}
			})
		}
	}
}

func js(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}
