package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
)

// A commitCase builds a chain with qemu-img and qemu-io in a directory, then
// runs `commit ARGS TOP` there.
type commitCase struct {
	name  string
	build []string // shell commands run in the directory, in order
	args  []string // commit flags
	top   string
	base  string // the image committed into
	// images are the chain's files, checked after the commit.
	images []string
	// qemuBreaksTop: qemu-img leaves the top unreadable (vmdk parentCID).
	qemuBreaksTop bool
	// unchanged are more images (besides the top) whose content must not
	// change: intermediates that instarfs keeps valid and qemu does not.
	unchanged []string
	// snapshot names an internal snapshot of the base whose content must not
	// change.
	snapshot string
	crash    bool // run the crash sweep
}

func (c commitCase) baseFormat() string { return qemutest.FormatOf(c.base) }

var commitCases = []commitCase{
	{
		name: "v3",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 2M' -c 'write -P 0x12 4M 64k' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 3M 64k' -c 'write -P 0 5M 64k' -c 'discard 4M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "v2 base",
		build: []string{
			"qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 2M' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 3M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"},
	},
	{
		name: "v2 base with backing, v2 top",
		build: []string{
			"qemu-img create -q -f qcow2 bottom.qcow2 8M",
			"qemu-io -c 'write -P 0x01 0 8M' bottom.qcow2",
			"qemu-img create -q -f qcow2 -o compat=0.10 -b bottom.qcow2 -F qcow2 base.qcow2",
			"qemu-io -c 'write -P 0x11 0 2M' base.qcow2",
			"qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 6M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2", "bottom.qcow2"}, crash: true,
	},
	{
		name: "ov 64k on base 4k",
		build: []string{
			"qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 2M' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 3M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"},
	},
	{
		name: "ov 64k on base 2M",
		build: []string{
			"qemu-img create -q -f qcow2 -o cluster_size=2M base.qcow2 16M",
			"qemu-io -c 'write -P 0x11 0 6M' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 2M 2M' -c 'write -z 64k 64k' -c 'write -P 0x22 5M 4k' -c 'write -P 0x23 9M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "ov 2M on base 64k",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 16M",
			"qemu-io -c 'write -P 0x11 0 6M' base.qcow2",
			"qemu-img create -q -f qcow2 -o cluster_size=2M -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -P 0x22 9M 4k' -c 'write -z 2M 2M' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"},
	},
	{
		name: "extended L2 overlay",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 4M' base.qcow2",
			"qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 2M 128k' -c 'write -P 0x22 4096 4096' -c 'write -P 0x23 70000 100' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "base smaller than overlay",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 1G",
			"qemu-io -c 'write -P 0x11 0 1M' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4G",
			"qemu-io -c 'write -P 0x22 3G 64k' -c 'write -P 0x23 512k 4k' -c 'write -z 2G 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "compressed base clusters overwritten",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 8M",
			"qemu-io -c 'write -c -P 0x11 0 64k' -c 'write -c -P 0x12 64k 64k' -c 'write -c -P 0x13 128k 64k' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -P 0x22 0 4k' -c 'write -P 0x23 64k 64k' -c 'write -z 128k 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "base with an internal snapshot",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 2M' base.qcow2",
			"qemu-img snapshot -c snap base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 3M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true, snapshot: "snap",
	},
	{
		name: "top with an internal snapshot",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 2M' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -P 0x22 1M 64k' top.qcow2",
			"qemu-img snapshot -c snap top.qcow2",
			"qemu-io -c 'write -P 0x23 3M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "-d",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 2M' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' top.qcow2",
		},
		args: []string{"-d"},
		top:  "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"},
	},
	{
		name: "-b on a 3-level chain",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 2M' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2",
			"qemu-io -c 'write -P 0x21 1M 128k' -c 'write -z 4M 64k' mid.qcow2",
			"qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -P 0x31 1M 4k' -c 'write -P 0x32 6M 64k' -c 'write -P 0x33 512k 4k' top.qcow2",
		},
		args:      []string{"-b", "base.qcow2"},
		unchanged: []string{"mid.qcow2"},
		top:       "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "mid.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "vmdk into vmdk",
		build: []string{
			"qemu-img create -q -f vmdk base.vmdk 8M",
			"qemu-io -f vmdk -c 'write -P 0x11 0 2M' base.vmdk",
			"qemu-img create -q -f vmdk -b base.vmdk -F vmdk top.vmdk",
			"qemu-io -f vmdk -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 3M 64k' -c 'write -P 0 5M 64k' top.vmdk",
		},
		top: "top.vmdk", base: "base.vmdk", images: []string{"top.vmdk", "base.vmdk"}, qemuBreaksTop: true, crash: true,
	},
	{
		name: "qcow2 into vmdk",
		build: []string{
			"qemu-img create -q -f vmdk base.vmdk 8M",
			"qemu-io -f vmdk -c 'write -P 0x11 0 2M' base.vmdk",
			"qemu-img create -q -f qcow2 -b base.vmdk -F vmdk top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 3M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.vmdk", images: []string{"top.qcow2", "base.vmdk"}, crash: true,
	},
	{
		name: "qcow2 into raw",
		build: []string{
			"qemu-img create -q -f raw base.raw 8M",
			"qemu-io -f raw -c 'write -P 0x11 0 2M' base.raw",
			"qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 1M 4k' -c 'write -P 0x23 3M 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.raw", images: []string{"top.qcow2", "base.raw"}, crash: true,
	},
	{
		name: "raw base grows",
		build: []string{
			"qemu-img create -q -f raw base.raw 4M",
			"qemu-io -f raw -c 'write -P 0x11 0 1M' base.raw",
			"qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 8M",
			"qemu-io -c 'write -P 0x22 6M 64k' -c 'write -z 7M 64k' -c 'write -z 0 64k' top.qcow2",
		},
		top: "top.qcow2", base: "base.raw", images: []string{"top.qcow2", "base.raw"}, crash: true,
	},
	{
		name: "vmdk base with zeroed grains",
		build: []string{
			"qemu-img create -q -f vmdk -o zeroed_grain=on base.vmdk 8M",
			"qemu-io -f vmdk -c 'write -P 0x11 0 2M' base.vmdk",
			"qemu-img create -q -f qcow2 -b base.vmdk -F vmdk top.qcow2",
			"qemu-io -c 'write -z 0 128k' -c 'write -P 0x22 3M 4k' top.qcow2",
		},
		top: "top.qcow2", base: "base.vmdk", images: []string{"top.qcow2", "base.vmdk"},
	},
	{
		name: "-b on a vmdk chain",
		build: []string{
			"qemu-img create -q -f vmdk base.vmdk 8M",
			"qemu-io -f vmdk -c 'write -P 0x11 0 2M' base.vmdk",
			"qemu-img create -q -f vmdk -b base.vmdk -F vmdk mid.vmdk",
			"qemu-io -f vmdk -c 'write -P 0x21 1M 128k' mid.vmdk",
			"qemu-img create -q -f vmdk -b mid.vmdk -F vmdk top.vmdk",
			"qemu-io -f vmdk -c 'write -P 0x31 1M 4k' -c 'write -P 0x32 6M 64k' -c 'write -P 0x33 512k 4k' top.vmdk",
		},
		args:      []string{"-b", "base.vmdk"},
		unchanged: []string{"mid.vmdk"},
		top:       "top.vmdk", base: "base.vmdk", images: []string{"top.vmdk", "mid.vmdk", "base.vmdk"}, qemuBreaksTop: true, crash: true,
	},
	{
		name: "extended L2 base",
		build: []string{
			"qemu-img create -q -f qcow2 -o extended_l2=on base.qcow2 8M",
			"qemu-io -c 'write -P 0x11 0 1M' -c 'write -c -P 0x12 2M 64k' base.qcow2",
			"qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -P 0x22 4k 4k' -c 'write -z 128k 64k' -c 'write -P 0x23 3M 4k' -c 'write -P 0x24 2M 4k' -c 'write -z 1M 8k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "ov 512 on base 64k",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 4M",
			"qemu-io -c 'write -P 0x11 0 1M' base.qcow2",
			"qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -z 0 64k' -c 'write -z 128k 512' -c 'write -P 0x22 1M 512' -c 'write -z 2M 128k' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"},
	},
	{
		// The top's refcount table lists several blocks: emptying rewrites
		// it, durably, before its first block.
		name: "ov 512 with several refcount blocks",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 4M",
			"qemu-io -c 'write -P 0x11 0 1M' base.qcow2",
			"qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -P 0x22 64k 320k' -c 'write -P 0x23 3M 512' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "unaligned sizes",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 1000k",
			"qemu-io -c 'write -P 0x11 0 999k' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1536512",
			"qemu-io -c 'write -z 960k 40k' -c 'write -P 0x22 1400k 4k' -c 'write -P 0x23 1536000 512' top.qcow2",
		},
		top: "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "base.qcow2"}, crash: true,
	},
	{
		name: "-b with unaligned sizes",
		build: []string{
			"qemu-img create -q -f qcow2 base.qcow2 1000k",
			"qemu-io -c 'write -P 0x11 0 999k' base.qcow2",
			"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2",
			"qemu-io -c 'write -P 0x21 0 4k' mid.qcow2",
			"qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2",
			"qemu-io -c 'write -P 0x31 990k 10k' top.qcow2",
		},
		args:      []string{"-b", "base.qcow2"},
		unchanged: []string{"mid.qcow2"},
		top:       "top.qcow2", base: "base.qcow2", images: []string{"top.qcow2", "mid.qcow2", "base.qcow2"}, crash: true,
	},
}

// commitOurs runs instarfs commit in dir with extra environment.
func commitOurs(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	return runOp(t, dir, env, "commit", args...)
}

// commitCluster is one row of the normalised map: qemu-img map expanded to
// fixed-size units, host offsets ignored.
type commitCluster struct {
	Start               int64
	Depth               int
	Zero, Data, Present bool
}

// commitMap expands `qemu-img map --output=json` of file to unit-sized rows
// (host offsets ignored).
func commitMap(t *testing.T, dir, file string, unit int64) []commitCluster {
	t.Helper()
	rows := qemutest.Map(t, filepath.Join(dir, file), qemutest.FormatOf(file))
	// Cut every row at unit boundaries: one entry per unit, and one more
	// wherever the status changes inside a unit, so that two maps compare
	// equal exactly when they say the same for every byte.
	var out []commitCluster
	for _, row := range rows {
		for o := row.Start; o < row.Start+row.Length; o = (o/unit + 1) * unit {
			c := commitCluster{o, row.Depth, row.Zero, row.Data, row.Present}
			if n := len(out); n > 0 && out[n-1].Start/unit == o/unit && out[n-1].same(c) {
				continue
			}
			out = append(out, c)
		}
	}
	return out
}

func (c commitCluster) same(d commitCluster) bool {
	return c.Depth == d.Depth && c.Zero == d.Zero && c.Data == d.Data && c.Present == d.Present
}

func commitFileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestCommitMatchesQemu commits copies of the same chain with instarfs and with
// qemu-img and compares the results: base content, check, normalised map, the
// top's size and (ours) that the top still reads as before.
func TestCommitMatchesQemu(t *testing.T) {
	for _, c := range commitCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			pristine, ours, theirs := filepath.Join(root, "pristine"), filepath.Join(root, "ours"), filepath.Join(root, "qemu")
			if err := os.Mkdir(pristine, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range c.build {
				shellIn(t, pristine, cmd)
			}
			copyDir(t, pristine, ours)
			copyDir(t, pristine, theirs)

			args := append(append([]string{}, c.args...), c.top)
			q := qemuImg(t, theirs, append([]string{"commit", "-f", qemutest.FormatOf(c.top)}, args...)...)
			if q.code != 0 {
				t.Fatalf("qemu-img commit: exit %d: %s", q.code, q.stderr)
			}
			r := commitOurs(t, ours, nil, append([]string{"--output=json"}, args...)...)
			if r.code != 0 {
				t.Fatalf("instarfs commit: exit %d: %s %s", r.code, r.stdout, r.stderr)
			}
			var env struct {
				Operation string
				Backing   string
			}
			if err := json.Unmarshal(r.stdout, &env); err != nil || env.Operation != "commit" {
				t.Errorf("envelope %s: %v", r.stdout, err)
			}
			commitVerify(t, c, pristine, ours, theirs)
		})
	}
}

func commitVerify(t *testing.T, c commitCase, pristine, ours, theirs string) {
	t.Helper()
	if r := compareImages(t, filepath.Join(ours, c.base), filepath.Join(theirs, c.base)); r.code != 0 {
		t.Errorf("base content differs from qemu's: %s%s", r.stdout, r.stderr)
	}
	for _, im := range c.images {
		checkClean(t, filepath.Join(ours, im), false)
	}
	unit := int64(64 << 10)
	if m, q := commitMap(t, ours, c.base, unit), commitMap(t, theirs, c.base, unit); !reflect.DeepEqual(m, q) {
		t.Errorf("base map differs from qemu's\n ours: %v\nqemu: %v", commitDiffRows(m, q), commitDiffRows(q, m))
	}
	if a, b := commitFileSize(t, filepath.Join(ours, c.top)), commitFileSize(t, filepath.Join(theirs, c.top)); a != b {
		t.Errorf("top is %d bytes, qemu's %d", a, b)
	}
	// The top still shows what it showed before, through its chain.
	for _, im := range append([]string{c.top}, c.unchanged...) {
		if r := compareImages(t, filepath.Join(pristine, im), filepath.Join(ours, im)); r.code != 0 {
			t.Errorf("%s content changed: %s%s", im, r.stdout, r.stderr)
		}
	}
	if c.snapshot != "" {
		commitSnapshotUnchanged(t, c, pristine, ours)
	}
	if !c.qemuBreaksTop {
		if r := compareImages(t, filepath.Join(theirs, c.top), filepath.Join(ours, c.top)); r.code != 0 {
			t.Errorf("top content differs from qemu's top: %s%s", r.stdout, r.stderr)
		}
	}
}

// commitSnapshotUnchanged checks that the base's internal snapshot reads as
// in the pristine copy.
func commitSnapshotUnchanged(t *testing.T, c commitCase, pristine, dir string) {
	t.Helper()
	for _, d := range []string{pristine, dir} {
		shellIn(t, d, "qemu-img convert -O raw -l snapshot.name="+c.snapshot+" "+c.base+" snap.raw")
	}
	qemutest.SameBytes(t, filepath.Join(dir, "snap.raw"), filepath.Join(pristine, "snap.raw"))
	os.Remove(filepath.Join(dir, "snap.raw"))
}

// commitDiffRows returns the rows of a not in b (at most 8), for messages.
func commitDiffRows(a, b []commitCluster) []commitCluster {
	in := map[commitCluster]bool{}
	for _, r := range b {
		in[r] = true
	}
	var out []commitCluster
	for _, r := range a {
		if !in[r] && len(out) < 8 {
			out = append(out, r)
		}
	}
	return out
}

// TestCommitCrashSweep kills the worker before its N-th write, for N = 1, 2, …
// until a run completes. After each crash every image must check without
// errors (leaks allowed) and the top must read as before; re-running the commit
// must then complete with qemu's final base content.
func TestCommitCrashSweep(t *testing.T) {
	for _, c := range commitCases {
		if !c.crash {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			pristine, theirs := filepath.Join(root, "pristine"), filepath.Join(root, "qemu")
			if err := os.Mkdir(pristine, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range c.build {
				shellIn(t, pristine, cmd)
			}
			copyDir(t, pristine, theirs)
			args := append(append([]string{"-q"}, c.args...), c.top)
			if q := qemuImg(t, theirs, append([]string{"commit", "-q", "-f", qemutest.FormatOf(c.top)}, append(c.args, c.top)...)...); q.code != 0 {
				t.Fatalf("qemu-img commit: %s", q.stderr)
			}
			for n := 1; ; n++ {
				if n > 2000 {
					t.Fatal("the commit never completed")
				}
				dir := filepath.Join(root, "crash"+strconv.Itoa(n))
				copyDir(t, pristine, dir)
				r := commitOurs(t, dir, []string{fmt.Sprintf("INSTARFS_FAULT_AFTER_WRITES=%d", n)}, args...)
				if r.code == 0 {
					t.Logf("completed without a crash at N=%d", n)
					commitVerifyFinal(t, c, pristine, dir, theirs)
					return
				}
				for _, im := range c.images {
					checkClean(t, filepath.Join(dir, im), true)
				}
				for _, im := range append([]string{c.top}, c.unchanged...) {
					if r := compareImages(t, filepath.Join(pristine, im), filepath.Join(dir, im)); r.code != 0 {
						t.Errorf("N=%d: %s content changed by the crash: %s%s", n, im, r.stdout, r.stderr)
					}
				}
				if r := commitOurs(t, dir, nil, args...); r.code != 0 {
					t.Fatalf("N=%d: re-running commit: exit %d: %s", n, r.code, r.stderr)
				}
				commitVerifyFinal(t, c, pristine, dir, theirs)
				os.RemoveAll(dir)
				if t.Failed() {
					t.Fatalf("stopping the sweep at N=%d", n)
				}
			}
		})
	}
}

// commitVerifyFinal checks a completed commit: the base holds qemu's content, every
// image checks (leaks allowed after a crash), the top reads as before.
func commitVerifyFinal(t *testing.T, c commitCase, pristine, dir, theirs string) {
	t.Helper()
	if r := compareImages(t, filepath.Join(dir, c.base), filepath.Join(theirs, c.base)); r.code != 0 {
		t.Errorf("base content differs from qemu's: %s%s", r.stdout, r.stderr)
	}
	for _, im := range c.images {
		checkClean(t, filepath.Join(dir, im), true)
	}
	for _, im := range append([]string{c.top}, c.unchanged...) {
		if r := compareImages(t, filepath.Join(pristine, im), filepath.Join(dir, im)); r.code != 0 {
			t.Errorf("%s content changed: %s%s", im, r.stdout, r.stderr)
		}
	}
	if c.snapshot != "" {
		commitSnapshotUnchanged(t, c, pristine, dir)
	}
}

// TestCommitErrors checks the refusals: no backing file, a -b that is not in
// the chain.
func TestCommitErrors(t *testing.T) {
	dir := t.TempDir()
	shellIn(t, dir, "qemu-img create -q -f qcow2 solo.qcow2 1M && qemu-img create -q -f qcow2 base.qcow2 1M && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && qemu-img create -q -f qcow2 other.qcow2 1M")
	for _, tc := range []struct {
		args []string
		code string
	}{
		{[]string{"solo.qcow2"}, "NO_BACKING_FILE"},
		{[]string{"-b", "other.qcow2", "top.qcow2"}, "BASE_NOT_IN_CHAIN"},
	} {
		r := commitOurs(t, dir, nil, tc.args...)
		if r.code != 1 || !strings.Contains(string(r.stderr), "instarfs: "+tc.code+": ") {
			t.Errorf("commit %v: exit %d, stderr %s; want %s", tc.args, r.code, r.stderr, tc.code)
		}
	}
	shellIn(t, dir, "qemu-img create -q -f vmdk small.vmdk 1M && qemu-img create -q -f qcow2 -b small.vmdk -F vmdk big.qcow2 2M && qemu-io -c 'write -P 1 1536k 4k' big.qcow2 && cp small.vmdk small0.vmdk")
	if r := commitOurs(t, dir, nil, "big.qcow2"); r.code != 1 || !strings.Contains(string(r.stderr), "COMMIT_UNSUPPORTED") {
		t.Errorf("commit into a smaller vmdk: exit %d, stderr %s", r.code, r.stderr)
	}
	shellIn(t, dir, "cmp small.vmdk small0.vmdk")
	r := commitOurs(t, dir, nil, "top.qcow2")
	if r.code != 0 || string(r.stdout) != "Image committed.\n" {
		t.Errorf("commit: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
}
