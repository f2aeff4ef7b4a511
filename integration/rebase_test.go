package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
)

// rbPrelude defines the helpers the fixture scripts use.
const rbPrelude = `set -euo pipefail
QI() { qemu-io "$@" >/dev/null; }
mk() { qemu-img create -q -f qcow2 "$@"; }
`

// rbBasic is the basic fixture of the reference: base, new and an overlay
// whose options are $1.
const rbBasic = `
mk base.qcow2 64M
QI -c 'write -P 0x11 0 1M' -c 'write -P 0x22 4M 64k' -c 'write -P 0x44 12M 128k' base.qcow2
mk new.qcow2 64M
QI -c 'write -P 0x11 0 1M' -c 'write -P 0x99 4096 512' -c 'write -P 0x11 4096 1' \
   -c 'write -P 0x22 4M 64k' -c 'write -P 0x33 8M 64k' -c 'write -P 0x55 12M 4k' new.qcow2
mk -o "${OPTS:-compat=1.1}" -b base.qcow2 -F qcow2 ov.qcow2
QI -c 'write -P 0xaa 64k 64k' -c 'write -P 0xaa 12M 512' ov.qcow2
`

type rbCase struct {
	name  string
	setup string   // bash, run in the fixture directory
	file  string   // the overlay
	args  []string // rebase arguments before FILE (also given to qemu-img)
	// qemuDiffers: qemu-img's result is known to differ (a qemu bug we do not
	// copy); only our content is checked.
	qemuDiffers bool
	// newerDiffers: qemu-img 8.2 and later write other bytes than 7.2 (whose
	// result instarfs keeps); only content is compared with them.
	newerDiffers bool
	unsafe       bool // content may change (unsafe mode)
	crash        bool // run the crash sweep on this case
}

var rbCases = []rbCase{
	{name: "basic", setup: rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, crash: true},
	{name: "v2", setup: "OPTS=compat=0.10\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}},
	{name: "c512", setup: "OPTS=cluster_size=512\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, crash: true},
	{name: "c1k-v2", setup: "OPTS=cluster_size=1024,compat=0.10\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, crash: true},
	{name: "c4k", setup: "OPTS=cluster_size=4096\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}},
	{name: "c2m", setup: "OPTS=cluster_size=2M\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}},
	{name: "xl2", setup: "OPTS=extended_l2=on\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, crash: true},
	{name: "c2m-xl2", setup: "OPTS=cluster_size=2M,extended_l2=on\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}},
	{name: "lazy-refcounts", setup: "OPTS=lazy_refcounts=on\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}},
	{name: "refcount-bits-1", setup: "OPTS=refcount_bits=1\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}},
	{name: "refcount-bits-64-c1k", setup: "OPTS=refcount_bits=64,cluster_size=1024\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}},
	{name: "detach", setup: rbBasic, file: "ov.qcow2", args: []string{"-b", ""}, crash: true},
	{name: "detach-v2", setup: "OPTS=compat=0.10\n" + rbBasic, file: "ov.qcow2", args: []string{"-b", ""}},
	// qemu-img ignores -F when detaching; so does instarfs.
	{name: "detach-with-F", setup: rbBasic, file: "ov.qcow2", args: []string{"-b", "", "-F", "qcow2"}},
	{name: "unsafe-detach-with-F", setup: rbBasic, file: "ov.qcow2", args: []string{"-u", "-b", "", "-F", "qcow2"}, unsafe: true},
	{name: "identical-new", setup: rbBasic + "cp base.qcow2 same.qcow2\n", file: "ov.qcow2", args: []string{"-b", "same.qcow2", "-F", "qcow2"}},
	{name: "unsafe", setup: rbBasic, file: "ov.qcow2", args: []string{"-u", "-b", "new.qcow2", "-F", "qcow2"}, unsafe: true, crash: true},
	{name: "unsafe-detach", setup: rbBasic, file: "ov.qcow2", args: []string{"-u", "-b", ""}, unsafe: true, crash: true},
	{name: "unsafe-missing", setup: rbBasic, file: "ov.qcow2", args: []string{"-u", "-b", "not-there.qcow2", "-F", "qcow2"}, unsafe: true},
	{name: "short-old-v3", file: "ov.qcow2", args: []string{"-b", "new64.qcow2", "-F", "qcow2"}, crash: true, setup: `
mk old32.qcow2 32M;  QI -c 'write -P 0x11 0 64k' old32.qcow2
mk new64.qcow2 64M;  QI -c 'write -P 0x11 0 64k' -c 'write -P 0x77 40M 4k' -c 'write -P 0x78 48M 1M' new64.qcow2
mk -b old32.qcow2 -F qcow2 ov.qcow2 64M
`},
	{name: "short-old-v2", file: "ov.qcow2", args: []string{"-b", "new64.qcow2", "-F", "qcow2"}, crash: true, setup: `
mk old32.qcow2 32M;  QI -c 'write -P 0x11 0 64k' old32.qcow2
mk new64.qcow2 64M;  QI -c 'write -P 0x11 0 64k' -c 'write -P 0x77 40M 4k' -c 'write -P 0x78 48M 1M' new64.qcow2
mk -o compat=0.10 -b old32.qcow2 -F qcow2 ov.qcow2 64M
`},
	{name: "short-old-xl2", file: "ov.qcow2", args: []string{"-b", "new64.qcow2", "-F", "qcow2"}, setup: `
mk old32.qcow2 32M;  QI -c 'write -P 0x11 0 64k' old32.qcow2
mk new64.qcow2 64M;  QI -c 'write -P 0x11 0 64k' -c 'write -P 0x77 40M 4k' -c 'write -P 0x78 48M 1M' new64.qcow2
mk -o extended_l2=on -b old32.qcow2 -F qcow2 ov.qcow2 64M
`},
	{name: "short-new", file: "ov.qcow2", args: []string{"-b", "new32.qcow2", "-F", "qcow2"}, setup: `
mk old64.qcow2 64M;  QI -c 'write -P 0x11 0 64k' -c 'write -P 0x22 40M 4k' -c 'write -z 44M 64k' old64.qcow2
mk new32.qcow2 32M;  QI -c 'write -P 0x11 0 64k' new32.qcow2
mk -b old64.qcow2 -F qcow2 ov.qcow2 64M
`},
	{name: "prefix-chain", file: "top3.qcow2", args: []string{"-b", "base3.qcow2", "-F", "qcow2"}, crash: true, setup: `
mk base3.qcow2 16M; QI -c 'write -P 0x11 0 1M' base3.qcow2
mk -b base3.qcow2 -F qcow2 mid3.qcow2
QI -c 'write -P 0x22 128k 64k' -c 'write -P 0x11 256k 64k' -c 'write -z 512k 64k' -c 'write -P 0x23 2M 64k' mid3.qcow2
mk -b mid3.qcow2 -F qcow2 top3.qcow2
QI -c 'write -P 0x33 2M 4k' top3.qcow2
`},
	{name: "solo-v3", file: "solo.qcow2", args: []string{"-b", "rb-target.qcow2", "-F", "qcow2"}, setup: `
mk rb-target.qcow2 16M; QI -c 'write -P 0x77 1M 1M' rb-target.qcow2
mk solo.qcow2 16M;      QI -c 'write -P 0x22 0 64k' solo.qcow2
`},
	// qemu-img 7.2 turns the zero writes into discards here and changes the
	// guest content; we write explicit zeros (docs/quirks.md).
	{name: "solo-v2", file: "solo.qcow2", args: []string{"-b", "rb-target.qcow2", "-F", "qcow2"}, qemuDiffers: true, setup: `
mk rb-target.qcow2 16M; QI -c 'write -P 0x77 1M 1M' rb-target.qcow2
mk -o compat=0.10 solo.qcow2 16M; QI -c 'write -P 0x22 0 64k' solo.qcow2
`},
	{name: "compressed-old", file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, crash: true, setup: rbBasic + `
qemu-img convert -c -O qcow2 base.qcow2 basec.qcow2 && mv basec.qcow2 base.qcow2
`},
	{name: "compressed-new-zstd", file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, setup: rbBasic + `
qemu-img convert -c -o compression_type=zstd -O qcow2 new.qcow2 newc.qcow2 && mv newc.qcow2 new.qcow2
`},
	{name: "snapshot-overlay", file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, crash: true, setup: rbBasic + `
qemu-img snapshot -c s1 ov.qcow2
`},
	{name: "vmdk-old-backing", file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, setup: `
qemu-img create -q -f vmdk base.vmdk 64M; QI -f vmdk -c 'write -P 0x11 0 1M' -c 'write -P 0x12 8M 64k' base.vmdk
mk new.qcow2 64M; QI -c 'write -P 0x11 0 512k' -c 'write -P 0x13 8M 4k' new.qcow2
mk -b base.vmdk -F vmdk ov.qcow2; QI -c 'write -P 0xaa 64k 64k' ov.qcow2
`},
	{name: "raw-backings", file: "ov.qcow2", args: []string{"-b", "new.raw", "-F", "raw"}, setup: `
qemu-img create -q -f raw base.raw 16M; QI -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x12 5M 8k' base.raw
qemu-img create -q -f raw new.raw 16M; QI -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x13 9M 4k' new.raw
mk -b base.raw -F raw ov.qcow2; QI -c 'write -P 0xaa 64k 64k' ov.qcow2
`},
	{name: "odd-size-overlay", file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, setup: `
mk base.qcow2 2M; QI -c 'write -P 0x11 0 2M' base.qcow2
mk new.qcow2 2M
mk -b base.qcow2 -F qcow2 ov.qcow2 1049088
`},
	// A cluster straddles the old backing's end, reads zero there, and the
	// new backing has data after the old end: 7.2 sets the zero flag, 10.x
	// writes a zero-filled cluster (docs/quirks.md).
	{name: "straddle-old-end", file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, newerDiffers: true, crash: true, setup: `
mk old.qcow2 1049088
mk new.qcow2 2M; QI -c 'write -P 0x66 1049600 512' new.qcow2
mk -b old.qcow2 -F qcow2 ov.qcow2 2M
`},
	{name: "c512-many", file: "ov.qcow2", args: []string{"-b", "new.qcow2", "-F", "qcow2"}, setup: `
mk base.qcow2 32M; QI -c 'write -P 0x11 0 10M' base.qcow2
mk new.qcow2 32M
mk -o cluster_size=512 -b base.qcow2 -F qcow2 ov.qcow2; QI -c 'write -P 0xaa 1M 4k' ov.qcow2
`},
}

func rbSh(t *testing.T, dir, script string) { t.Helper(); shellIn(t, dir, rbPrelude+script) }

// rbOurs runs instarfs rebase in dir with extra environment.
func rbOurs(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	return runOp(t, dir, env, "rebase", args...)
}

// rbSameContent fails unless the two images read the same through their own
// backing chains.
func rbSameContent(t *testing.T, a, b string) {
	t.Helper()
	if r := compareImages(t, a, b); r.code != 0 {
		t.Fatalf("qemu-img compare %s %s: exit %d\n%s%s", a, b, r.code, r.stdout, r.stderr)
	}
}

// TestRebaseMatchesQemu rebases copies of the same fixtures with instarfs and
// with every qemu-img oracle present (the system's 7.2, and those `make
// oracles` builds) and requires byte-identical overlays, a clean check, and
// (safe mode) unchanged guest content.
func TestRebaseMatchesQemu(t *testing.T) {
	for _, o := range qemutest.Oracles(t) {
		t.Logf("oracle %s: qemu-img %s", o.Name, o.Version)
	}
	for _, c := range rbCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			pristine, ours := filepath.Join(root, "pristine"), filepath.Join(root, "ours")
			if err := os.Mkdir(pristine, 0o755); err != nil {
				t.Fatal(err)
			}
			rbSh(t, pristine, c.setup)
			copyDir(t, pristine, ours)
			args := append(append([]string{}, c.args...), c.file)
			r := rbOurs(t, ours, nil, append([]string{"--output=json"}, args...)...)
			if r.code != 0 {
				t.Fatalf("instarfs rebase: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			var env map[string]any
			if err := json.Unmarshal(r.stdout, &env); err != nil {
				t.Fatalf("envelope: %v\n%s", err, r.stdout)
			}
			wantMode := "safe"
			if c.unsafe {
				wantMode = "unsafe"
			}
			if env["operation"] != "rebase" || env["mode"] != wantMode || env["error"] != nil {
				t.Fatalf("envelope %s", r.stdout)
			}
			if !strings.Contains(strings.Join(c.args, " "), "not-there") {
				checkClean(t, filepath.Join(ours, c.file), false)
			}
			if !c.unsafe {
				rbSameContent(t, filepath.Join(pristine, c.file), filepath.Join(ours, c.file))
			}
			qemutest.Each(t, func(t *testing.T, o qemutest.Oracle) {
				theirs := filepath.Join(root, "qemu-"+o.Name)
				copyDir(t, pristine, theirs)
				o.Img(t, theirs, append([]string{"rebase"}, args...)...)
				switch {
				case c.qemuDiffers:
				case c.newerDiffers && o.Major() >= 8:
					rbSameContent(t, filepath.Join(theirs, c.file), filepath.Join(ours, c.file))
				default:
					qemutest.SameBytes(t, filepath.Join(theirs, c.file), filepath.Join(ours, c.file))
				}
			})
		})
	}
}

// TestRebaseCrashSweep kills the worker before each of its writes in turn and
// checks every survivor: no refcount errors (leaks are fine), the guest
// content unchanged, and a second run completing with the bytes of an
// uninterrupted run.
func TestRebaseCrashSweep(t *testing.T) {
	for _, c := range append(rbCases, rbVmdkCrashCases...) {
		if !c.crash {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			rbCrashSweep(t, c)
		})
	}
}

// rbVmdkCrashCases are vmdk rebases, which qemu-img cannot do: they are swept
// for crashes, and compared with qemu-img by reading the result (TestRebaseVmdk).
var rbVmdkCrashCases = []rbCase{
	{name: "vmdk-safe", file: "top.vmdk", args: []string{"-b", "new.vmdk", "-F", "vmdk"}, crash: true, setup: rbVmdkChain},
	{name: "vmdk-unsafe", file: "top.vmdk", args: []string{"-u", "-b", "same.vmdk", "-F", "vmdk"}, unsafe: true, crash: true, setup: rbVmdkChain},
	{name: "vmdk-detach", file: "top.vmdk", args: []string{"-b", ""}, crash: true, setup: rbVmdkChain},
}

const rbVmdkChain = `
qemu-img create -q -f vmdk old.vmdk 4M
QI -f vmdk -c 'write -P 0x11 0 2M' old.vmdk
qemu-img create -q -f vmdk new.vmdk 4M
QI -f vmdk -c 'write -P 0x11 0 1M' -c 'write -P 0x44 3M 64k' new.vmdk
cp old.vmdk same.vmdk
qemu-img create -q -f vmdk -b old.vmdk -F vmdk top.vmdk
QI -f vmdk -c 'write -P 0x22 64k 4k' -c 'write -P 0x23 1M 64k' top.vmdk
`

func rbCrashSweep(t *testing.T, c rbCase) {
	root := t.TempDir()
	pristine, clean := filepath.Join(root, "pristine"), filepath.Join(root, "clean")
	if err := os.Mkdir(pristine, 0o755); err != nil {
		t.Fatal(err)
	}
	rbSh(t, pristine, c.setup)
	copyDir(t, pristine, clean)
	args := append(append([]string{"-q"}, c.args...), c.file)
	if r := rbOurs(t, clean, nil, args...); r.code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s", r.code, r.stderr)
	}
	for n := 1; ; n++ {
		if n > 500 {
			t.Fatal("no uninterrupted run after 500 writes")
		}
		dir := filepath.Join(root, fmt.Sprint("n", n))
		copyDir(t, pristine, dir)
		r := rbOurs(t, dir, []string{fmt.Sprintf("INSTARFS_FAULT_AFTER_WRITES=%d", n)}, args...)
		if r.code == 0 {
			qemutest.SameBytes(t, filepath.Join(clean, c.file), filepath.Join(dir, c.file))
			t.Logf("%d crash points checked", n-1)
			return
		}
		ov := filepath.Join(dir, c.file)
		checkClean(t, ov, true)
		rbSameContent(t, filepath.Join(pristine, c.file), ov)
		if r := rbOurs(t, dir, nil, args...); r.code != 0 {
			t.Fatalf("re-run after a crash at write %d: exit %d\n%s", n, r.code, r.stderr)
		}
		qemutest.SameBytes(t, filepath.Join(clean, c.file), ov)
		checkClean(t, ov, false)
		os.RemoveAll(dir)
	}
}

// TestRebaseErrors checks refusals: named errors, exit status 1, the overlay
// untouched.
func TestRebaseErrors(t *testing.T) {
	root := t.TempDir()
	rbSh(t, root, rbBasic+`
mk -o cluster_size=512 small.qcow2 1M
printf 'not an image at all' > junk.bin
qemu-img create -q -f raw disk.raw 1M
`)
	long := strings.Repeat("x", 1024)
	tests := []struct {
		name string
		file string
		args []string
		code string
	}{
		{"name too long", "ov.qcow2", []string{"-u", "-b", long, "-F", "qcow2"}, "BACKING_NAME_TOO_LONG"},
		{"no room", "small.qcow2", []string{"-u", "-b", strings.Repeat("y", 200) + "/" + strings.Repeat("y", 199), "-F", "qcow2"}, "BACKING_NAME_NO_ROOM"},
		{"missing new backing", "ov.qcow2", []string{"-b", "nope.qcow2", "-F", "qcow2"}, "BACKING_NOT_FOUND"},
		{"outside root", "ov.qcow2", []string{"-b", "../../../../etc/passwd", "-F", "raw"}, "BACKING_PATH_OUTSIDE_ROOT"},
		{"json refused", "ov.qcow2", []string{"-b", `json:{"file":"/etc/passwd"}`, "-F", "raw"}, "BACKING_PROTOCOL_REFUSED"},
		{"raw never inferred", "ov.qcow2", []string{"-b", "junk.bin"}, "RAW_NOT_INFERRED"},
		{"unsafe without -F, unknown", "ov.qcow2", []string{"-u", "-b", "nope.qcow2"}, "BACKING_FORMAT_REQUIRED"},
		{"json refused in unsafe mode, -F raw", "ov.qcow2", []string{"-u", "-F", "raw", "-b", `json:{"file":"/etc/passwd"}`}, "BACKING_PROTOCOL_REFUSED"},
		{"protocol refused in unsafe mode, -F raw", "ov.qcow2", []string{"-u", "-F", "raw", "-b", "nbd://host/x"}, "BACKING_PROTOCOL_REFUSED"},
		{"raw has no backing file", "disk.raw", []string{"-f", "raw", "-u", "-b", "base.qcow2", "-F", "qcow2"}, "REBASE_UNSUPPORTED"},
		{"no -b", "ov.qcow2", nil, "BAD_ARGUMENTS"},
		{"no -b, json", "ov.qcow2", []string{"--output=json"}, "BAD_ARGUMENTS"},
		{"a flag's bad value", "ov.qcow2", []string{"--output=xml", "-u"}, "BAD_ARGUMENTS"},
		{"an unknown flag", "ov.qcow2", []string{"--bogus", "-u"}, "BAD_ARGUMENTS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, err := os.ReadFile(filepath.Join(root, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			r := rbOurs(t, root, nil, append(append([]string{}, tc.args...), tc.file)...)
			if r.code != 1 || !bytes.Contains(r.stderr, []byte("instarfs: "+tc.code+":")) {
				t.Fatalf("exit %d, stderr %q; want %s", r.code, r.stderr, tc.code)
			}
			if slices.Contains(tc.args, "--output=json") {
				var env struct{ Error struct{ Code string } }
				if err := json.Unmarshal(r.stdout, &env); err != nil || env.Error.Code != tc.code {
					t.Fatalf("--output=json printed %q (%v); want an envelope with %s", r.stdout, err, tc.code)
				}
			}
			after, _ := os.ReadFile(filepath.Join(root, tc.file))
			if !bytes.Equal(before, after) {
				t.Fatal("the image changed")
			}
		})
	}
}

// TestOperationEnvelopeOnEarlyFailure: with --output=json, rebase and commit
// print the error envelope also when they fail before opening the image.
func TestOperationEnvelopeOnEarlyFailure(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"rebase", "--output=json", "-b", "x.qcow2", "nodir/ov.qcow2"},
		{"commit", "--output=json", "nodir/ov.qcow2"},
	} {
		r := execIn(t, dir, binary, args...)
		var env struct {
			Operation string
			Error     struct{ Code string }
		}
		if err := json.Unmarshal(r.stdout, &env); err != nil || r.code != 1 || env.Operation != args[0] || env.Error.Code != "NOT_FOUND" {
			t.Errorf("%v: exit %d, stdout %q (%v), stderr %q; want a NOT_FOUND envelope", args, r.code, r.stdout, err, r.stderr)
		}
	}
}

// TestRebaseDetectsFormat: -F omitted is inferred from the magic (qemu-img
// requires it); the header gets the detected format.
func TestRebaseDetectsFormat(t *testing.T) {
	root := t.TempDir()
	rbSh(t, root, rbBasic)
	theirs := filepath.Join(t.TempDir(), "q")
	copyDir(t, root, theirs)
	for _, args := range [][]string{{"-u", "-b", "new.qcow2"}, {"-b", "base.qcow2"}} {
		if r := rbOurs(t, root, nil, append(args, "ov.qcow2")...); r.code != 0 || string(r.stdout) != "Image rebased.\n" {
			t.Fatalf("%v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
		}
		if q := qemuImg(t, theirs, append(append([]string{"rebase"}, args...), "-F", "qcow2", "ov.qcow2")...); q.code != 0 {
			t.Fatalf("qemu-img: %s", q.stderr)
		}
		qemutest.SameBytes(t, filepath.Join(theirs, "ov.qcow2"), filepath.Join(root, "ov.qcow2"))
	}
}

// TestRebaseVmdk covers vmdk rebase, which qemu-img cannot do: the result must
// read (through qemu) exactly as before, check clean, and name the new parent
// with its CID.
func TestRebaseVmdk(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		parent  string // "" when detached
		copied  bool   // grains must have been copied
		errCode string
	}{
		{name: "safe", args: []string{"-b", "new.vmdk", "-F", "vmdk"}, parent: "new.vmdk", copied: true},
		{name: "safe, format detected", args: []string{"-b", "new.vmdk"}, parent: "new.vmdk", copied: true},
		{name: "unsafe onto an identical copy", args: []string{"-u", "-b", "same.vmdk", "-F", "vmdk"}, parent: "same.vmdk"},
		{name: "safe detach", args: []string{"-b", ""}, copied: true},
		{name: "not a vmdk parent", args: []string{"-u", "-b", "new.vmdk", "-F", "qcow2"}, errCode: "VMDK_PARENT_NOT_VMDK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rbSh(t, dir, rbVmdkChain)
			shellIn(t, dir, "cp top.vmdk pristine.vmdk")
			cmd := exec.Command(binary, append(append([]string{"--allow-dir", dir, "rebase", "--output=json"}, tc.args...), "top.vmdk")...)
			cmd.Dir = dir
			out, err := cmd.Output()
			if tc.errCode != "" {
				if err == nil || !strings.Contains(string(out), tc.errCode) {
					t.Fatalf("rebase succeeded or failed with the wrong error: %v %s", err, out)
				}
				if r := compareImages(t, filepath.Join(dir, "pristine.vmdk"), filepath.Join(dir, "top.vmdk")); r.code != 0 {
					t.Errorf("refused rebase changed the image: %s", r.stdout)
				}
				return
			}
			if err != nil {
				t.Fatalf("rebase: %v: %s", err, out)
			}
			var env struct {
				ClustersCopied int64 `json:"clusters_copied"`
			}
			if err := json.Unmarshal(out, &env); err != nil {
				t.Fatal(err)
			}
			if (env.ClustersCopied > 0) != tc.copied {
				t.Errorf("copied %d grains, want copies: %v", env.ClustersCopied, tc.copied)
			}
			// pristine.vmdk still reads through old.vmdk.
			if r := compareImages(t, filepath.Join(dir, "pristine.vmdk"), filepath.Join(dir, "top.vmdk")); r.code != 0 {
				t.Errorf("content changed: %s%s", r.stdout, r.stderr)
			}
			checkClean(t, filepath.Join(dir, "top.vmdk"), false)
			var info struct {
				Backing string `json:"backing-filename"`
				Spec    struct {
					Data struct {
						ParentCID uint32 `json:"parent-cid"`
					}
				} `json:"format-specific"`
			}
			r := qemuImg(t, dir, "info", "--output=json", "top.vmdk")
			if err := json.Unmarshal(r.stdout, &info); err != nil {
				t.Fatal(err)
			}
			if info.Backing != tc.parent {
				t.Errorf("backing file %q, want %q", info.Backing, tc.parent)
			}
			want := uint32(0xffffffff)
			if tc.parent != "" {
				var p struct {
					Spec struct{ Data struct{ CID uint32 } } `json:"format-specific"`
				}
				json.Unmarshal(qemuImg(t, dir, "info", "--output=json", tc.parent).stdout, &p)
				want = p.Spec.Data.CID
			}
			if info.Spec.Data.ParentCID != want {
				t.Errorf("parent CID %x, want %x", info.Spec.Data.ParentCID, want)
			}
			if tc.parent == "" {
				// qemu's template for an image without a parent.
				if d := vmdkDescriptor(t, filepath.Join(dir, "top.vmdk")); !strings.Contains(d, "parentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\n# Extent description\n") {
					t.Errorf("detached descriptor does not follow qemu's template:\n%s", d)
				}
			}
		})
	}
}

// vmdkDescriptor returns the embedded descriptor text of a vmdk.
func vmdkDescriptor(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 512 {
		t.Fatalf("reading %s: %v", path, err)
	}
	d := b[512:min(len(b), 512+10240)]
	if i := bytes.IndexByte(d, 0); i >= 0 {
		d = d[:i]
	}
	return string(d)
}

// TestNoCommand: instarfs with no arguments shows its usage on stderr and
// fails, as qemu-img does, so a script that lost its arguments notices.
func TestNoCommand(t *testing.T) {
	r := execIn(t, t.TempDir(), binary)
	if r.code != 1 || !bytes.Contains(r.stderr, []byte("usage: instarfs")) || !bytes.Contains(r.stderr, []byte("instarfs: BAD_ARGUMENTS: no command given")) || len(r.stdout) != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q; want usage and BAD_ARGUMENTS on stderr, exit 1", r.code, r.stdout, r.stderr)
	}
}
