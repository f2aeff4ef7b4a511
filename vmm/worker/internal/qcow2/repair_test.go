package qcow2

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

// The repair tests run `qemu-img check -r` (the oracle) and Repair on two
// copies of each damaged image, and compare the messages, the counts, the
// second check and the bytes of the repaired files.

// osRepairFile is a RepairFile over an *os.File.
type osRepairFile struct{ *os.File }

func (f osRepairFile) Datasync() error { return unix.Fdatasync(int(f.Fd())) }
func (f osRepairFile) PunchHole(off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// qemuRepair is what `qemu-img check -r` printed.
type qemuRepair struct {
	exit     int
	stdout   string
	messages []string // stderr lines, less qemu-img's own "qemu-img: " lines
	failed   bool     // qemu-img said "Check failed"
}

func runQemuRepair(t *testing.T, path, mode string) qemuRepair {
	t.Helper()
	r := qemutest.Check(t, path, "qcow2", "-r", mode)
	q := qemuRepair{stdout: string(r.Stdout), exit: r.Code}
	for _, l := range strings.Split(strings.TrimSuffix(string(r.Stderr), "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "qemu-img: Check failed"):
			q.failed = true
		case l != "" && !strings.HasPrefix(l, "qemu-img: "):
			q.messages = append(q.messages, l)
		}
	}
	return q
}

func repairPath(t *testing.T, path string, mode RepairMode) (*RepairReport, error) {
	t.Helper()
	f, n := openSized(t, path, os.O_RDWR)
	return Repair(osRepairFile{f}, n, mode)
}

// repairHead is the start of qemu-img check -r's output when it fixed
// something.
func repairHead(rep *RepairReport) string {
	if rep.Final == nil {
		return ""
	}
	return fmt.Sprintf("The following inconsistencies were found and repaired:\n\n    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n", rep.LeaksFixed, rep.CorruptionsFixed)
}

func TestRepairMatchesQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	modes := []struct {
		name string
		mode RepairMode
	}{{"leaks", RepairLeaks}, {"all", RepairAll}}
	for _, tt := range append(repairCases(), ckDamagedCases()...) {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), tt.name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			orig := filepath.Join(dir, "orig.qcow2")
			tt.make(t, orig)
			for _, m := range modes {
				t.Run(m.name, func(t *testing.T) {
					theirs := filepath.Join(dir, m.name+"-qemu.qcow2")
					ours := filepath.Join(dir, m.name+"-ours.qcow2")
					for _, dst := range []string{theirs, ours} {
						if out, err := exec.Command("cp", "--sparse=always", orig, dst).CombinedOutput(); err != nil {
							t.Fatalf("cp: %v\n%s", err, out)
						}
					}
					compareRepair(t, orig, theirs, ours, m.name, m.mode)
				})
			}
		})
	}
}

func compareRepair(t *testing.T, orig, theirs, ours, modeName string, mode RepairMode) {
	q := runQemuRepair(t, theirs, modeName)
	rep, err := repairPath(t, ours, mode)
	if err != nil {
		if errcode.Of(err) == errcode.RepairUnsupported {
			t.Logf("refused: %v", err)
			qemutest.SameBytes(t, orig, ours)
			return
		}
		if why, ok := repairDiverges[filepath.Base(filepath.Dir(orig))]; ok {
			t.Logf("refused (%v): %s", err, why)
			qemutest.SameBytes(t, orig, ours)
			return
		}
		if !q.failed && q.exit != 1 {
			t.Fatalf("Repair: %v; qemu-img check -r exits %d:\n%s", err, q.exit, q.stdout)
		}
		t.Logf("both fail: %v", err)
		qemutest.SameBytes(t, orig, ours)
		return
	}
	var got []string
	for _, r := range []*CheckReport{rep.Pass, rep.Final} {
		if r == nil {
			continue
		}
		for _, m := range r.Messages {
			got = append(got, m.Text)
		}
	}
	if !reflect.DeepEqual(got, q.messages) {
		t.Errorf("messages differ:\n got %q\nwant %q", got, q.messages)
	}
	if rep.NeedsRebuild {
		if !q.failed {
			t.Errorf("Repair needs a rebuild, qemu-img check -r did not fail")
		}
		qemutest.SameBytes(t, theirs, ours)
		return
	}
	if q.failed {
		t.Fatalf("qemu-img check -r failed, Repair did not")
	}
	head := repairHead(rep)
	if !strings.HasPrefix(q.stdout, head) || (head == "" && strings.HasPrefix(q.stdout, "The following")) {
		t.Errorf("output differs:\n got %q\nwant %q", head, q.stdout)
	}
	final := rep.Pass
	if rep.Final != nil {
		final = rep.Final
	}
	if got := final.ExitCode(); got != q.exit {
		t.Errorf("exit %d, qemu-img exits %d", got, q.exit)
	}
	qemutest.SameBytes(t, theirs, ours)
}

// repairDiverges are the shared damaged cases whose repair qemu does and
// Repair refuses with the error Check gives.
var repairDiverges = map[string]string{
	"snapshot-extra-too-large": "qemu drops the snapshot's extra data; Repair does not rewrite snapshot tables",
}

// repairCases are damaged images beyond the check tests' own.
func repairCases() []ckCase {
	const cs = 65536
	withSnapshots := func(t *testing.T, path string) {
		qemutest.Img(t, "", "snapshot", "-c", "s1", path)
		qemutest.IO(t, path, "qcow2", "write -P 7 0 128k")
	}
	leakData := func(c *ckImage) {
		n := int64(len(c.data)) / cs
		c.grow(3)
		c.setRefcount(n, 1)
		c.setRefcount(n+2, 2)
		c.put64(n*cs, 0x5555555555555555)
	}
	return []ckCase{
		{name: "repair-leak-with-data", exit: 3, damage: leakData},
		{name: "repair-leak-snapshots", exit: 3, post: withSnapshots, damage: leakData},
		{
			name: "repair-too-low-shared", exit: 2, post: withSnapshots,
			damage: func(c *ckImage) { c.setRefcount(c.host(3)/cs, 1) },
		},
		{
			name: "repair-too-low-and-leak", exit: 2, post: withSnapshots,
			damage: func(c *ckImage) {
				c.setRefcount(c.host(3)/cs, 1)
				leakData(c)
			},
		},
		{
			name: "repair-l2-copied-cleared", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l2Off(0, 1), c.u64(c.l2Off(0, 1))&^OflagCopied) },
		},
		{
			name: "repair-l1-copied-cleared", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l1Off(0), c.u64(c.l1Off(0))&^OflagCopied) },
		},
		{
			name: "repair-dirty-leak", exit: 3, opts: []string{"lazy_refcounts=on"},
			damage: func(c *ckImage) {
				leakData(c)
				c.put64(72, IncompatDirty)
			},
		},
		{
			name: "repair-dirty-too-low", exit: 2, opts: []string{"lazy_refcounts=on"}, post: withSnapshots,
			damage: func(c *ckImage) {
				c.setRefcount(c.host(3)/cs, 1)
				c.put64(72, IncompatDirty)
			},
		},
		{
			name: "repair-dirty-zero", exit: 2, opts: []string{"lazy_refcounts=on"},
			damage: func(c *ckImage) {
				c.setRefcount(c.host(2)/cs, 0)
				c.put64(72, IncompatDirty)
			},
		},
		{
			name: "repair-corrupt-leak", exit: 3,
			damage: func(c *ckImage) {
				leakData(c)
				c.put64(72, IncompatCorrupt)
			},
		},
		{
			name: "repair-leak-refcount-bits-4", exit: 3, opts: []string{"refcount_bits=4"}, damage: leakData,
		},
		{
			name: "repair-zero-extended-l2", exit: 2, opts: []string{"extended_l2=on"},
			damage: func(c *ckImage) { c.setRefcount(c.host(1)/cs, 0) },
		},
		{
			// The second L2 table is the refcount block: writing its COPIED
			// flags would overwrite refcounts.
			name: "repair-l2-is-refblock", exit: 2,
			damage: func(c *ckImage) {
				rb := c.u64(int64(c.h.RefcountTableOffset))
				c.put64(c.l1Off(0), rb)
			},
		},
		{
			// The L2 table is the L1 table.
			name: "repair-l2-is-l1", exit: 2,
			damage: func(c *ckImage) { c.put64(c.l1Off(0), c.h.L1TableOffset) },
		},
		{
			name: "repair-zero-snapshots", exit: 2, post: withSnapshots,
			damage: func(c *ckImage) { c.setRefcount(c.host(1)/cs, 0) },
		},
	}
}

// TestRepairOverlapCheck checks the refusal of table writes that land on
// other metadata, which qemu's overlap check stops.
func TestRepairOverlapCheck(t *testing.T) {
	qemutest.NeedQemu(t)
	path := filepath.Join(t.TempDir(), "a.qcow2")
	qemutest.Create(t, path, "qcow2", "64M")
	qemutest.IO(t, path, "qcow2", ckWrites...)
	qemutest.Img(t, "", "snapshot", "-c", "s1", path)
	f, n := openSized(t, path, os.O_RDONLY)
	c, err := newRefChecker(f, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.load(); err != nil {
		t.Fatal(err)
	}
	h := c.h
	l2 := binary.BigEndian.Uint64(ckLoad(t, path).data[h.L1TableOffset:]) & L1OffsetMask
	tests := []struct {
		name     string
		off      uint64
		activeL1 bool
		refused  bool
	}{
		{"header", 0x200, false, true},
		{"refcount table", h.RefcountTableOffset, false, true},
		{"refcount block", c.reftable[0] & RefcountTableOffsetMask, false, true},
		{"snapshot table", h.SnapshotsOffset, false, true},
		{"snapshot L1", c.snaps[0].l1Offset, false, true},
		{"active L1 as L2", h.L1TableOffset, false, true},
		{"active L1 itself", h.L1TableOffset, true, false},
		{"an L2 table", l2, false, false},
	}
	for _, tt := range tests {
		err := c.overlapCheck(tt.off, uint64(c.cs), tt.activeL1)
		if got := errcode.Of(err) == errcode.RepairUnsupported; got != tt.refused {
			t.Errorf("%s (%#x): %v, refused %v", tt.name, tt.off, err, tt.refused)
		}
	}
}
