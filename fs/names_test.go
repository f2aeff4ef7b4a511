package fs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
)

// TestHostName checks how names written to control files are translated: the
// mount's layout (backing symlink text, absolute paths in the mountpoint) to
// the name qemu-img would write, and refusals of names with two meanings.
func TestHostName(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"base.qcow2", "ov.qcow2", "disk.raw", "sub/top.qcow2", "sub/disk.raw", "sub/only.qcow2"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	policy, _ := chainmodel.NewPolicy(dir)
	defer policy.Close()
	f := &FS{cfg: Config{ImageDir: dir, Opener: &ctl.Opener{Policy: policy}}, root: policy.Roots[0], mountpoint: "/mnt/images"}
	tests := []struct {
		image, name string
		want        string // the translated name, or the error code
	}{
		{"ov.qcow2", "base.qcow2", "base.qcow2"},
		{"ov.qcow2", "../base.qcow2", "base.qcow2"},          // backing symlink text
		{"ov.qcow2", "../ov.qcow2", "ov.qcow2"},              // the image itself (refused later)
		{"ov.qcow2", "/mnt/images/base.qcow2", "base.qcow2"}, // absolute in the mount
		{"ov.qcow2", "/mnt/images/sub/top.qcow2", "sub/top.qcow2"},
		{"ov.qcow2", "/elsewhere/base.qcow2", "/elsewhere/base.qcow2"}, // the policy judges it
		{"ov.qcow2", "../../etc/passwd", "../../etc/passwd"},
		{"ov.qcow2", "../later.qcow2", "../later.qcow2"}, // outside on the host, nothing in the mount
		{"ov.qcow2", "later.qcow2", "later.qcow2"},
		{"sub/top.qcow2", "/mnt/images/base.qcow2", "../base.qcow2"},
		{"sub/top.qcow2", "../only.qcow2", "only.qcow2"},    // mount meaning only
		{"sub/top.qcow2", "../base.qcow2", "../base.qcow2"}, // host meaning only
		{"sub/top.qcow2", "../disk.raw", string(errcode.AmbiguousName)},
		{"sub/top.qcow2", "../later.qcow2", string(errcode.AmbiguousName)},
		{"sub/top.qcow2", "disk.raw", "disk.raw"},
		{"ov.qcow2", "base.qcow2/", string(errcode.BadArguments)},
		{"ov.qcow2", "/mnt/images/base.qcow2/", string(errcode.BadArguments)},
		{"ov.qcow2", "sub/..", string(errcode.BadArguments)},
		{"ov.qcow2", ".", string(errcode.BadArguments)},
		{"ov.qcow2", strings.Repeat("n", 256), string(errcode.NameTooLong)},
		{"ov.qcow2", "", ""},
	}
	for _, tt := range tests {
		got, err := f.hostName("rebase", "-b", tt.image, tt.name)
		if err != nil {
			got = string(errcode.Of(err))
		}
		if got != tt.want {
			t.Errorf("%s: %q -> %q (%v), want %q", tt.image, tt.name, got, err, tt.want)
		}
	}
	_, err := f.hostName("rebase", "-b", "sub/top.qcow2", "../disk.raw")
	for _, s := range []string{"sub/disk.raw", " disk.raw", "/mnt/images/sub/disk.raw", "/mnt/images/disk.raw"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("ambiguity message %v does not name %q", err, s)
		}
	}
}
