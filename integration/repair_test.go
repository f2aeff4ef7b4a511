package integration

import (
	"bytes"
	be "encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
)

// The check -r tests repair copies of damaged images with instarfs and with
// qemu-img 7.2 and require the same output, exit status and bytes; the crash
// sweep kills the worker before each of its writes and requires an image that
// reads as before and that a second check -r completes.

// rpDamage patches an image made by qemu: 16-bit refcounts, version 3.
type rpDamage struct {
	t    *testing.T
	path string
	f    *os.File
	cs   int64
}

func rpOpen(t *testing.T, path string) *rpDamage {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	d := &rpDamage{t: t, path: path, f: f}
	d.cs = 1 << d.u32(20)
	if order := d.u32(96); order != 4 {
		t.Fatalf("%s: refcount order %d, the damage helpers need 4", path, order)
	}
	return d
}

func (d *rpDamage) read(off int64, n int) []byte {
	d.t.Helper()
	b := make([]byte, n)
	if _, err := d.f.ReadAt(b, off); err != nil {
		d.t.Fatal(err)
	}
	return b
}

func (d *rpDamage) u32(off int64) uint32 { return be.BigEndian.Uint32(d.read(off, 4)) }
func (d *rpDamage) u64(off int64) uint64 { return be.BigEndian.Uint64(d.read(off, 8)) }

func (d *rpDamage) put(off int64, b []byte) {
	d.t.Helper()
	if _, err := d.f.WriteAt(b, off); err != nil {
		d.t.Fatal(err)
	}
}

func (d *rpDamage) put64(off int64, v uint64) {
	d.put(off, be.BigEndian.AppendUint64(nil, v))
}

// setRefcount sets the refcount of cluster k (its block must exist).
func (d *rpDamage) setRefcount(k int64, v uint16) {
	per := d.cs / 2
	rb := int64(d.u64(int64(d.u64(48))+8*(k/per)) &^ 0x1ff)
	if rb == 0 {
		d.t.Fatalf("no refcount block for cluster %d", k)
	}
	d.put(rb+2*(k%per), be.BigEndian.AppendUint16(nil, v))
}

// l2Entry is the file offset of entry j of the L2 table of L1 entry 0.
func (d *rpDamage) l2Entry(j int64) int64 {
	return int64(d.u64(int64(d.u64(40)))&0x00fffffffffffe00) + 8*j
}

// host is the host cluster index of guest cluster j.
func (d *rpDamage) host(j int64) int64 {
	return int64(d.u64(d.l2Entry(j))&0x00fffffffffffe00) / d.cs
}

// leak appends n clusters with data and refcount 1.
func (d *rpDamage) leak(n int64) {
	st, err := d.f.Stat()
	if err != nil {
		d.t.Fatal(err)
	}
	k := (st.Size() + d.cs - 1) / d.cs
	d.put(k*d.cs, bytes.Repeat([]byte{0x5a}, int(n*d.cs)))
	for i := range n {
		d.setRefcount(k+i, 1)
	}
}

type rpCase struct {
	name   string
	setup  string // bash with rbPrelude's helpers, making img.qcow2
	damage func(d *rpDamage)
}

const rpSnapshots = `
mk img.qcow2 16M
QI -c 'write -P 1 0 1M' -c 'write -P 2 5M 64k' img.qcow2
qemu-img snapshot -c s1 img.qcow2
QI -c 'write -P 3 0 128k' img.qcow2
`

var rpCases = []rpCase{
	{name: "leaks", setup: "mk img.qcow2 16M\nQI -c 'write -P 1 0 1M' img.qcow2\n", damage: func(d *rpDamage) { d.leak(3) }},
	{name: "everything", setup: "OPTS=lazy_refcounts=on\n" + strings.Replace(rpSnapshots, "mk img.qcow2", `mk -o "$OPTS" img.qcow2`, 1), damage: func(d *rpDamage) {
		d.leak(2)
		d.setRefcount(d.host(5), 1)                      // shared with the snapshot: too low
		d.setRefcount(d.host(0), 3)                      // too high
		d.put64(d.l2Entry(3), d.u64(d.l2Entry(3))|1<<63) // COPIED on a shared cluster
		d.put64(72, 1)                                   // dirty
	}},
	{name: "rebuild", setup: rpSnapshots, damage: func(d *rpDamage) {
		d.setRefcount(d.host(1), 0)
		d.leak(1)
	}},
}

// rpSetup makes the case's damaged image in a new directory.
func rpSetup(t *testing.T, c rpCase, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rbSh(t, dir, c.setup)
	path := filepath.Join(dir, "img.qcow2")
	if c.damage != nil {
		c.damage(rpOpen(t, path))
	}
	return path
}

// rpStderr drops the final error line of either tool (their wording differs
// by design) from stderr.
func rpStderr(b []byte) string {
	var keep []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if !strings.HasPrefix(l, "qemu-img: ") && !strings.HasPrefix(l, "instarfs: ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "")
}

// rpCompare repairs copies of pristine/file with both tools (check -r and
// extra flags) and requires the same stdout, stderr, exit status and bytes.
// It returns instarfs's result.
func rpCompare(t *testing.T, pristine, file string, flags ...string) result {
	t.Helper()
	root := t.TempDir()
	ours, theirs := filepath.Join(root, "ours"), filepath.Join(root, "qemu")
	copyDir(t, pristine, ours)
	copyDir(t, pristine, theirs)
	args := append(append([]string{"-f", "qcow2"}, flags...), file)
	r := runOp(t, ours, nil, "check", args...)
	q := qemuImg(t, theirs, append([]string{"check"}, args...)...)
	if r.code != q.code || string(r.stdout) != string(q.stdout) || rpStderr(r.stderr) != rpStderr(q.stderr) {
		t.Fatalf("check %v:\ninstarfs: exit %d\n%s%s\nqemu-img: exit %d\n%s%s", flags, r.code, r.stdout, r.stderr, q.code, q.stdout, q.stderr)
	}
	qemutest.SameBytes(t, filepath.Join(theirs, file), filepath.Join(ours, file))
	return r
}

// TestRepairMatchesQemu repairs each damaged image with -r leaks and -r all,
// in both output forms.
func TestRepairMatchesQemu(t *testing.T) {
	for _, c := range rpCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "pristine")
			path := rpSetup(t, c, dir)
			for _, flags := range [][]string{{"--output=json"}, {"-r", "leaks"}, {"-r", "all"}, {"--output=json", "-r", "all"}, {"-q", "-r", "all"}, {"-q"}} {
				r := rpCompare(t, dir, "img.qcow2", flags...)
				if r.code == 0 && flags[len(flags)-1] == "all" {
					rbSameContent(t, path, filepath.Join(dir, "img.qcow2"))
				}
			}
		})
	}
}

// TestRepairInterruptedOps makes the leaks an interrupted rebase or commit
// leaves (every crash point of their sweeps) and repairs them with both tools.
func TestRepairInterruptedOps(t *testing.T) {
	ops := []struct {
		name, op, setup, file string
		args                  []string
	}{
		{name: "rebase", op: "rebase", setup: rbBasic, file: "ov.qcow2", args: []string{"-q", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"}},
		{name: "rebase-c512", op: "rebase", setup: "OPTS=cluster_size=512\n" + rbBasic, file: "ov.qcow2", args: []string{"-q", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"}},
		{name: "commit", op: "commit", setup: strings.Join(commitCases[0].build, "\n"), file: "base.qcow2", args: []string{"-q", "top.qcow2"}},
	}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			pristine := filepath.Join(root, "pristine")
			if err := os.Mkdir(pristine, 0o755); err != nil {
				t.Fatal(err)
			}
			rbSh(t, pristine, o.setup)
			leaky := 0
			for n := 1; ; n++ {
				if n > 500 {
					t.Fatal("the operation never completed")
				}
				dir := filepath.Join(root, fmt.Sprint("n", n))
				copyDir(t, pristine, dir)
				if r := runOp(t, dir, []string{fmt.Sprintf("INSTARFS_FAULT_AFTER_WRITES=%d", n)}, o.op, o.args...); r.code == 0 {
					break
				}
				if q := qemuImg(t, dir, "check", o.file); q.code == 3 {
					leaky++
					rpCompare(t, dir, o.file, "-r", "leaks")
					rpCompare(t, dir, o.file, "-r", "all")
				}
				os.RemoveAll(dir)
			}
			if leaky == 0 {
				t.Fatal("no crash point leaked a cluster: the sweep tested nothing")
			}
			t.Logf("%d leaking crash points repaired", leaky)
		})
	}
}

// TestRepairCrashSweep kills the worker before each write of check -r all in
// turn: the image must read as before, and a second check -r all must
// complete with a clean image.
func TestRepairCrashSweep(t *testing.T) {
	for _, c := range rpCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			pristine := filepath.Join(root, "pristine")
			path := rpSetup(t, c, pristine)
			for n := 1; ; n++ {
				if n > 500 {
					t.Fatal("check -r never completed")
				}
				dir := filepath.Join(root, fmt.Sprint("n", n))
				copyDir(t, pristine, dir)
				img := filepath.Join(dir, "img.qcow2")
				r := runOp(t, dir, []string{fmt.Sprintf("INSTARFS_FAULT_AFTER_WRITES=%d", n)}, "check", "-q", "-r", "all", "img.qcow2")
				if r.code == 0 {
					t.Logf("%d crash points checked", n-1)
					return
				}
				rbSameContent(t, path, img)
				if r := runOp(t, dir, nil, "check", "-q", "-r", "all", "img.qcow2"); r.code != 0 {
					t.Fatalf("N=%d: second check -r all: exit %d\n%s", n, r.code, r.stderr)
				}
				checkClean(t, img, false)
				rbSameContent(t, path, img)
				os.RemoveAll(dir)
			}
		})
	}
}

// TestMountRepair repairs through the repair control file: the same bytes as
// qemu-img check -r, result.json and status as for rebase and commit, and the
// errnos of refusals.
func TestMountRepair(t *testing.T) {
	dir := t.TempDir()
	for _, c := range rpCases {
		rpSetup(t, c, filepath.Join(dir, "pristine-"+c.name))
		copyDir(t, filepath.Join(dir, "pristine-"+c.name), filepath.Join(dir, "qemu-"+c.name))
	}
	images := t.TempDir()
	for _, c := range rpCases {
		shellIn(t, dir, fmt.Sprintf("cp --sparse=always pristine-%s/img.qcow2 %q/%s.qcow2", c.name, images, c.name))
	}
	shellIn(t, images, "cp --sparse=always rebuild.qcow2 rebuild-leaks.qcow2 && qemu-img create -q -f vmdk disk.vmdk 1M")
	m := mount(t, images, nil)

	ok := []struct{ image, mode, qemu string }{
		{"leaks", "leaks", "leaks"},
		{"everything", "all", "everything"},
		{"rebuild", "all", "rebuild"},
	}
	for _, tt := range ok {
		if r := m.shell(t, "echo "+tt.mode+" > "+tt.image+".qcow2/repair"); r.code != 0 {
			t.Fatalf("echo %s > %s.qcow2/repair: exit %d, %s; status %s", tt.mode, tt.image, r.code, r.stderr, m.read(t, tt.image+".qcow2", "status"))
		}
		var env struct {
			Operation, Mode string
			LeaksFixed      *int64 `json:"leaks_fixed"`
			Corruptions     *int64
			Error           map[string]string
		}
		if err := json.Unmarshal([]byte(m.read(t, tt.image+".qcow2", "result.json")), &env); err != nil {
			t.Fatal(err)
		}
		if env.Operation != "repair" || env.Mode != tt.mode || env.Error != nil || env.LeaksFixed == nil || env.Corruptions == nil || *env.Corruptions != 0 {
			t.Errorf("%s: result.json %+v", tt.image, env)
		}
		if s := m.read(t, tt.image+".qcow2", "status"); s != "ok repair\n" {
			t.Errorf("%s: status %q", tt.image, s)
		}
		qemuImg(t, filepath.Join(dir, "qemu-"+tt.qemu), "check", "-q", "-r", tt.mode, "img.qcow2")
		qemutest.SameBytes(t, filepath.Join(dir, "qemu-"+tt.qemu, "img.qcow2"), filepath.Join(images, tt.image+".qcow2"))
	}

	refused := []struct{ image, line, message, code string }{
		{"leaks", "bogus", "Invalid argument", "BAD_ARGUMENTS"},
		{"leaks", "-r leaks", "Invalid argument", "BAD_ARGUMENTS"},
		{"rebuild-leaks", "leaks", "Input/output error", "REPAIR_NEEDS_REBUILD"},
		{"disk.vmdk", "all", "Operation not supported", "REPAIR_UNSUPPORTED"},
	}
	for _, tt := range refused {
		dirName := tt.image
		if !strings.Contains(dirName, ".") {
			dirName += ".qcow2"
		}
		r := m.shell(t, "echo "+quote(tt.line)+" > "+dirName+"/repair")
		if r.code == 0 || !bytes.Contains(r.stderr, []byte("write error: "+tt.message)) {
			t.Errorf("%s %q: exit %d, stderr %q; want write error: %s", dirName, tt.line, r.code, r.stderr, tt.message)
		}
		var env struct {
			Operation string
			Error     map[string]string
		}
		if err := json.Unmarshal([]byte(m.read(t, dirName, "result.json")), &env); err != nil {
			t.Fatal(err)
		}
		if env.Operation != "repair" || !strings.EqualFold(codeOf(env.Error), tt.code) {
			t.Errorf("%s %q: result.json %+v, want %s", dirName, tt.line, env, tt.code)
		}
	}
}
