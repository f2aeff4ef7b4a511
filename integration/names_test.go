package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// backingOf is the backing file name in img's header, as qemu-img reads it
// (the header only: the backing file may not exist).
func backingOf(t *testing.T, dir, img string) string {
	t.Helper()
	r := qemuImg(t, dir, "info", "--output=json", "-U", img)
	var v struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(r.stdout, &v); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", img, err, r.stderr)
	}
	return v.Backing
}

// TestMountShellNames writes names a shell produces to control files: tab
// completion's trailing slash, the text of a backing symlink, absolute paths
// in the mountpoint, names over the file system's limit, the image itself.
func TestMountShellNames(t *testing.T) {
	dir := demoCopy(t)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	for _, p := range []string{"sub/disk.raw", "disk.raw"} {
		os.WriteFile(filepath.Join(dir, p), make([]byte, 1<<20), 0o644)
	}
	for _, c := range [][]string{
		{"create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", "sub/top.qcow2", "1M"},
		{"create", "-q", "-f", "qcow2", "-b", "sub/disk.raw", "-F", "raw", "named.qcow2", "1M"}, // shows disk.raw, sub/disk.raw
		{"create", "-q", "-f", "qcow2", "-b", "../disk.raw", "-F", "raw", "sub/up.qcow2", "1M"},
	} {
		if r := qemuImg(t, dir, c...); r.code != 0 {
			t.Fatalf("qemu-img %v: %s", c, r.stderr)
		}
	}
	m := mount(t, dir, nil)
	m.shell(t, "ls -R >/dev/null") // learn the raw files
	long := strings.Repeat("n", 300)
	tests := []struct {
		image, file, line string
		errno             string // what bash prints; "" for success, "any" for any failure
		backing           string // the header afterwards
		warning           bool   // result.json has a warning
	}{
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b new-base.qcow2/", "Invalid argument", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-b new-base.qcow2/", "Invalid argument", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b sub/..", "Invalid argument", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b ./", "Invalid argument", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b sub", "any", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b " + long, "File name too long", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-b overlay.qcow2", "Invalid argument", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b ../overlay.qcow2", "Invalid argument", "base.qcow2", false},
		{"base.qcow2", "rebase", "-u -F qcow2 -b overlay.qcow2", "Invalid argument", "", false},
		{"base.qcow2", "rebase", "-b ../overlay.qcow2", "Invalid argument", "", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b ../new-base.qcow2", "", "new-base.qcow2", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b " + m.path("base.qcow2"), "", "base.qcow2", false},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b later.qcow2", "", "later.qcow2", true},
		{"overlay.qcow2", "rebase", "-u -F qcow2 -b base.qcow2", "", "base.qcow2", false},
		{"sub/top.qcow2", "rebase", "-u -F raw -b ../disk.raw", "Invalid argument", "disk.raw", false},
		{"sub/top.qcow2", "rebase", "-u -F qcow2 -b " + m.path("base.qcow2"), "", "../base.qcow2", false},
		{"sub/up.qcow2", "rebase", "-u -F raw -b " + m.path("sub", "disk.raw"), "", "disk.raw", false},
		{"sub/up.qcow2", "rebase", "-u -F raw -b ../top.qcow2/../disk.raw", "Invalid argument", "disk.raw", false},
	}
	for _, tt := range tests {
		t.Run(tt.image+" "+tt.line[:min(len(tt.line), 60)], func(t *testing.T) {
			r := m.shell(t, "echo "+tt.line+" > "+tt.image+"/"+tt.file)
			ok := r.code != 0 && bytes.Contains(r.stderr, []byte("write error: "+tt.errno))
			switch tt.errno {
			case "":
				ok = r.code == 0
			case "any":
				ok = r.code != 0
			}
			if !ok {
				t.Errorf("exit %d, %s; want %q; status %s", r.code, r.stderr, tt.errno, m.read(t, tt.image, "status"))
			}
			if got := backingOf(t, dir, tt.image); got != tt.backing {
				t.Errorf("backing file %q, want %q", got, tt.backing)
			}
			res := m.read(t, tt.image, "result.json")
			if strings.Contains(res, `"warnings"`) != tt.warning {
				t.Errorf("result.json %s: warning %v expected", res, tt.warning)
			}
		})
	}
	// The ambiguity is explained with both meanings and the unambiguous forms.
	m.shell(t, "echo -u -F raw -b ../disk.raw > sub/top.qcow2/rebase")
	s := m.read(t, "sub", "top.qcow2", "status")
	for _, want := range []string{"sub/disk.raw", "'" + m.path("sub", "disk.raw") + "'", "'" + m.path("disk.raw") + "'"} {
		if !strings.Contains(s, want) {
			t.Errorf("status %q does not name %s", s, want)
		}
	}
	// Lookups of names over the limit say so.
	if _, err := os.Stat(m.path(long)); err == nil || !strings.Contains(err.Error(), "file name too long") {
		t.Errorf("stat of a 300-byte name: %v", err)
	}
}

// TestMountMissingBacking: chain.json of an image whose backing file is
// missing lists the images that open and names the one that does not;
// info.json answers as qemu-img info does.
func TestMountMissingBacking(t *testing.T) {
	dir := t.TempDir()
	shellIn(t, dir, `
qemu-img create -q -f qcow2 base.qcow2 1M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
mv base.qcow2 gone.qcow2`)
	if r := qemuImg(t, dir, "info", "--backing-chain", "top.qcow2"); r.code == 0 {
		t.Fatalf("qemu-img info --backing-chain answered for a missing member; the premise changed")
	}
	m := mount(t, dir, nil)
	var chain []map[string]any
	if err := json.Unmarshal([]byte(m.read(t, "top.qcow2", "chain.json")), &chain); err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || chain[0]["filename"] != "top.qcow2" || chain[1]["filename"] != "mid.qcow2" || chain[2]["filename"] != "base.qcow2" {
		t.Fatalf("chain.json: %v", chain)
	}
	if e, _ := chain[2]["error"].(map[string]any); e["code"] != "BACKING_NOT_FOUND" {
		t.Errorf("the missing member: %v", chain[2])
	}
	want := execIn(t, dir, binary, "info", "--output=json", "top.qcow2")
	if got := m.read(t, "top.qcow2", "info.json"); want.code != 0 || got != string(want.stdout) {
		t.Errorf("info.json %s, command line %s", got, want.stdout)
	}
	// Once the file is back, chain.json is the full chain again.
	os.Rename(filepath.Join(dir, "gone.qcow2"), filepath.Join(dir, "base.qcow2"))
	want = execIn(t, dir, binary, "info", "--output=json", "--backing-chain", "top.qcow2")
	if got := m.read(t, "top.qcow2", "chain.json"); got != string(want.stdout) {
		t.Errorf("chain.json after the file came back:\n%s\nwant\n%s", got, want.stdout)
	}
}

// TestRebaseShellNames: the command line refuses names that can never open as
// an image file before writing anything, and writes a name that does not
// exist yet in unsafe mode with a warning.
func TestRebaseShellNames(t *testing.T) {
	root := t.TempDir()
	rbSh(t, root, rbBasic+"\nmkdir d\nmk -b ov.qcow2 -F qcow2 top.qcow2 1M\n")
	for _, tc := range []struct {
		file string
		args []string
		code string
	}{
		{"ov.qcow2", []string{"-u", "-F", "qcow2", "-b", "base.qcow2/"}, "BAD_ARGUMENTS"},
		{"ov.qcow2", []string{"-b", "base.qcow2/"}, "BAD_ARGUMENTS"},
		{"ov.qcow2", []string{"-u", "-F", "qcow2", "-b", "d/.."}, "BAD_ARGUMENTS"},
		{"ov.qcow2", []string{"-u", "-F", "qcow2", "-b", "."}, "BAD_ARGUMENTS"},
		{"ov.qcow2", []string{"-u", "-F", "qcow2", "-b", strings.Repeat("n", 256)}, "NAME_TOO_LONG"},
		{"ov.qcow2", []string{"-b", "ov.qcow2"}, "REBASE_CREATES_LOOP"},
		{"ov.qcow2", []string{"-u", "-F", "qcow2", "-b", "ov.qcow2"}, "REBASE_CREATES_LOOP"},
		{"ov.qcow2", []string{"-u", "-F", "qcow2", "-b", "top.qcow2"}, "REBASE_CREATES_LOOP"},
		{"ov.qcow2", []string{"-b", "top.qcow2"}, "REBASE_CREATES_LOOP"},
	} {
		before, _ := os.ReadFile(filepath.Join(root, tc.file))
		r := rbOurs(t, root, nil, append(append([]string{}, tc.args...), tc.file)...)
		if r.code != 1 || !bytes.Contains(r.stderr, []byte("instarfs: "+tc.code+":")) {
			t.Errorf("%v: exit %d, stderr %q; want %s", tc.args, r.code, r.stderr, tc.code)
		}
		if after, _ := os.ReadFile(filepath.Join(root, tc.file)); !bytes.Equal(before, after) {
			t.Errorf("%v: the image changed", tc.args)
		}
	}
	// qemu-img writes a name that does not exist in unsafe mode; so do we, and warn.
	r := rbOurs(t, root, nil, "-u", "-F", "qcow2", "-b", "later.qcow2", "--output=json", "ov.qcow2")
	if r.code != 0 || !bytes.Contains(r.stderr, []byte("warning: backing file 'later.qcow2' does not exist")) || !bytes.Contains(r.stdout, []byte(`"warnings":["backing file 'later.qcow2' does not exist`)) {
		t.Errorf("rebase -u onto a name that does not exist: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := backingOf(t, root, "ov.qcow2"); got != "later.qcow2" {
		t.Errorf("backing file %q after rebase -u", got)
	}
}
