package worker

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/internal/qemutest"
)

// TestCommitCopyFallbacks commits the same chains with copy_file_range
// working, refused in each way the kernel refuses it, and copying less than
// asked: every run must leave bytes identical to the others, and content
// equal to qemu-img commit's. The chains make a commit step span several
// runs of the top's data clusters, compressed and zero clusters of the top,
// base data read back into the base (a base with larger clusters), and a
// raw base.
func TestCommitCopyFallbacks(t *testing.T) {
	qemutest.NeedQemu(t)
	tmpl := t.TempDir()
	sh(t, tmpl, `
qemu-img create -q -f qcow2 -o cluster_size=64k base.qcow2 4M
qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x12 2M 192k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x21 4k 8k' -c 'write -P 0x22 20k 200k' -c 'write -c -P 0x23 256k 4k' \
	-c 'write -z 300k 64k' -c 'write -P 0x24 2100k 12k' -c 'write -P 0x25 3M 128k' top.qcow2 >/dev/null
qemu-io -c 'write -P 0x26 60k 8k' top.qcow2 >/dev/null
qemu-img create -q -f raw rbase.raw 4M
qemu-io -f raw -c 'write -P 0x31 0 512k' rbase.raw >/dev/null
qemu-img create -q -f qcow2 -b rbase.raw -F raw rtop.qcow2
qemu-io -c 'write -P 0x32 64k 256k' -c 'write -c -P 0x33 1M 64k' -c 'write -P 0x34 2M 64k' rtop.qcow2 >/dev/null
`)
	chains := []struct {
		top, base, format string
	}{
		{"top.qcow2", "base.qcow2", "qcow2"},
		{"rtop.qcow2", "rbase.raw", "raw"},
	}
	// qemu-img's commits, to compare with.
	qemuDir := t.TempDir()
	copyFiles(t, tmpl, qemuDir)
	for _, c := range chains {
		sh(t, qemuDir, "qemu-img commit -q "+c.top)
	}

	var calls int
	counted := func(f func(int, *int64, int, *int64, int, int) (int, error)) func(int, *int64, int, *int64, int, int) (int, error) {
		return func(rfd int, roff *int64, wfd int, woff *int64, n, flags int) (int, error) {
			calls++
			return f(rfd, roff, wfd, woff, n, flags)
		}
	}
	refuse := func(errno unix.Errno) func(int, *int64, int, *int64, int, int) (int, error) {
		return func(int, *int64, int, *int64, int, int) (int, error) { return 0, errno }
	}
	cases := []struct {
		name string
		copy func(int, *int64, int, *int64, int, int) (int, error)
		// most is the most calls the commit of the first chain may make
		// (-1: no bound), least the fewest.
		least, most int
	}{
		{"kernel", unix.CopyFileRange, 1, -1},
		{"EXDEV", refuse(unix.EXDEV), 1, 1},
		{"ENOSYS", refuse(unix.ENOSYS), 1, 1},
		{"EOPNOTSUPP", refuse(unix.EOPNOTSUPP), 1, 1},
		{"EINVAL", refuse(unix.EINVAL), 1, 2}, // the first may be within the base, where it is not final
		{"nothing copied", func(int, *int64, int, *int64, int, int) (int, error) { return 0, nil }, 1, -1},
		{"short copies", func(rfd int, roff *int64, wfd int, woff *int64, n, flags int) (int, error) {
			return unix.CopyFileRange(rfd, roff, wfd, woff, min(n, 3000), flags)
		}, 1, -1},
		{"short copy then EIO", func(rfd int, roff *int64, wfd int, woff *int64, n, flags int) (int, error) {
			if n%2 == 1 {
				return 0, unix.EIO
			}
			return unix.CopyFileRange(rfd, roff, wfd, woff, n/2+1, flags)
		}, 1, -1},
	}
	root := t.TempDir()
	var first string
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(root, strconv.Itoa(i))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			copyFiles(t, tmpl, dir)
			old := copyFileRange
			t.Cleanup(func() { copyFileRange = old })
			calls = 0
			copyFileRange = counted(tc.copy)
			for i, c := range chains {
				if _, err := runCommit(t, dir, []string{c.top, c.base}, []string{"qcow2", c.format}, `{"base":1}`); err != nil {
					t.Fatalf("commit of %s: %v", c.top, err)
				}
				if i == 0 && (calls < tc.least || tc.most >= 0 && calls > tc.most) {
					t.Errorf("commit of %s made %d copy_file_range calls, want %d to %d", c.top, calls, tc.least, tc.most)
				}
				if r := qemutest.Compare(t, filepath.Join(dir, c.base), filepath.Join(qemuDir, c.base)); r.Code != 0 {
					t.Errorf("%s differs from qemu-img's commit: %s%s", c.base, r.Stdout, r.Stderr)
				}
				if c.format == "qcow2" {
					if r := qemutest.Check(t, filepath.Join(dir, c.base), "qcow2"); r.Code != 0 {
						t.Errorf("qemu-img check %s: exit %d\n%s%s", c.base, r.Code, r.Stdout, r.Stderr)
					}
				}
			}
			if first == "" {
				first = dir
				return
			}
			for _, c := range chains {
				for _, name := range []string{c.top, c.base} {
					qemutest.SameBytes(t, filepath.Join(dir, name), filepath.Join(first, name))
				}
			}
		})
	}
}

// copyFiles copies the regular files of src into dst.
func copyFiles(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
