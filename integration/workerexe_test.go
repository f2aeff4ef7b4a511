package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkerExecutable installs the two executables in the layouts a host
// may have and runs info and --version: instarfs finds instarfs-worker in its
// own directory (after symbolic links), through a directory its workers may
// not search, and a missing or unusable worker is SANDBOX_UNAVAILABLE naming
// the path looked for.
func TestWorkerExecutable(t *testing.T) {
	worker := filepath.Join(filepath.Dir(binary), "instarfs-worker")
	image := t.TempDir()
	if r := qemuImg(t, image, "create", "-q", "-f", "qcow2", "small.qcow2", "1M"); r.code != 0 {
		t.Fatal(string(r.stderr))
	}
	install := func(t *testing.T, dir string, workerMode os.FileMode) string {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		copyFile(t, binary, filepath.Join(dir, "instarfs"), 0o755)
		if workerMode != 0 {
			copyFile(t, worker, filepath.Join(dir, "instarfs-worker"), workerMode)
		}
		return filepath.Join(dir, "instarfs")
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, root string) (exe, workerPath string)
		root  bool   // only as root
		want  string // in the error of info; "" when info works
	}{
		{"side by side", func(t *testing.T, root string) (string, string) {
			return install(t, filepath.Join(root, "bin"), 0o755), ""
		}, false, ""},
		{"through a symbolic link", func(t *testing.T, root string) (string, string) {
			target := install(t, filepath.Join(root, "opt", "bin"), 0o755)
			link := filepath.Join(root, "usr", "bin", "instarfs")
			os.MkdirAll(filepath.Dir(link), 0o755)
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link, ""
		}, false, ""},
		{"under a directory the workers may not search", func(t *testing.T, root string) (string, string) {
			private := filepath.Join(root, "home")
			exe := install(t, filepath.Join(private, "bin"), 0o755)
			if err := os.Chmod(private, 0o700); err != nil {
				t.Fatal(err)
			}
			return exe, ""
		}, true, ""},
		{"worker missing", func(t *testing.T, root string) (string, string) {
			dir := filepath.Join(root, "bin")
			return install(t, dir, 0), filepath.Join(dir, "instarfs-worker")
		}, false, "does not exist"},
		{"worker missing next to the link's target", func(t *testing.T, root string) (string, string) {
			dir := filepath.Join(root, "opt")
			target := install(t, dir, 0)
			install(t, filepath.Join(root, "usr"), 0o755) // a worker next to the link does not count
			link := filepath.Join(root, "usr", "instarfs-link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link, filepath.Join(dir, "instarfs-worker")
		}, false, "does not exist"},
		{"worker not executable by others", func(t *testing.T, root string) (string, string) {
			dir := filepath.Join(root, "bin")
			return install(t, dir, 0o750), filepath.Join(dir, "instarfs-worker")
		}, true, "is not executable by others"},
		{"worker not executable", func(t *testing.T, root string) (string, string) {
			dir := filepath.Join(root, "bin")
			return install(t, dir, 0o644), filepath.Join(dir, "instarfs-worker")
		}, false, "is not executable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root: its workers run as uids of their own")
			}
			exe, workerPath := tt.setup(t, t.TempDir())
			if r := execIn(t, image, exe, "--version"); r.code != 0 || !strings.HasPrefix(string(r.stdout), "instarfs ") {
				t.Errorf("--version: exit %d, %q %q", r.code, r.stdout, r.stderr)
			}
			r := execIn(t, image, exe, "info", "--output=json", "small.qcow2")
			if tt.want == "" {
				// Nothing on stderr: an exec the kernel refused would show
				// as the jail's warning that it ran the worker with fewer
				// namespaces.
				var info map[string]any
				if r.code != 0 || json.Unmarshal(r.stdout, &info) != nil || info["virtual-size"] != float64(1<<20) || len(r.stderr) > 0 {
					t.Fatalf("info: exit %d, %s %s", r.code, r.stdout, r.stderr)
				}
				return
			}
			msg := string(r.stderr)
			if r.code == 0 || !strings.Contains(msg, "SANDBOX_UNAVAILABLE") ||
				!strings.Contains(msg, "the worker executable "+workerPath+" "+tt.want) {
				t.Fatalf("info: exit %d, stderr %q; want SANDBOX_UNAVAILABLE: the worker executable %s %s", r.code, msg, workerPath, tt.want)
			}
		})
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		t.Fatal(err)
	}
}

// TestMountExecutableMissing runs the mount command of an instarfs installed
// without instarfs-mount, which it executes to mount: MOUNT_FAILED naming the
// path looked for, and nothing mounted.
func TestMountExecutableMissing(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, binary, filepath.Join(dir, "instarfs"), 0o755)
	copyFile(t, filepath.Join(filepath.Dir(binary), "instarfs-worker"), filepath.Join(dir, "instarfs-worker"), 0o755)
	images, mnt := t.TempDir(), t.TempDir()
	r := execIn(t, images, filepath.Join(dir, "instarfs"), "mount", images, mnt)
	want := "MOUNT_FAILED: cannot run " + filepath.Join(dir, "instarfs-mount") + ": no such file or directory"
	if r.code != 1 || !strings.Contains(string(r.stderr), want) {
		t.Fatalf("mount: exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}
	if mounted, err := os.ReadFile("/proc/self/mountinfo"); err != nil || strings.Contains(string(mounted), " "+mnt+" ") {
		t.Fatalf("%s is mounted (%v)", mnt, err)
	}
}
