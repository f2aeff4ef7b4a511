package jail

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestContainedGroups checks that a contained program opens a file its
// supplementary group may read exactly when Contained was given that group,
// with and without namespaces: how QEMU opens /dev/kvm.
func TestContainedGroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the program runs as a uid of its own")
	}
	const gid = 4242
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // t.TempDir's are 0700
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "device")
	if err := os.WriteFile(file, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(file, 0, gid); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		namespaces bool
		groups     []uint32
		opens      bool
	}{
		{"namespaces, no group", true, nil, false},
		{"namespaces, the file's group", true, []uint32{gid}, true},
		{"no namespaces, no group", false, nil, false},
		{"no namespaces, the file's group", false, []uint32{gid}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			attr, _, release := Contained(tc.namespaces, tc.groups...)
			defer release()
			cmd := exec.Command("/bin/cat", file)
			cmd.SysProcAttr = attr
			out, err := cmd.CombinedOutput()
			if tc.namespaces && err != nil && NamespacesRefused(err) {
				t.Skipf("the kernel refused namespaces: %v", err)
			}
			if opens := err == nil; opens != tc.opens {
				t.Errorf("cat %s: %v %s; want it to open: %v", file, err, out, tc.opens)
			}
		})
	}
}
