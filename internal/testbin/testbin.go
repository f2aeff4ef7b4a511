// Package testbin builds the instarfs executables for the tests that run them
// end to end.
package testbin

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// An Executable is one of the product's executables, built as the Makefile
// builds it: the package, with the build tags.
type Executable struct {
	Name, Package, Tags string
}

// Executables are the product's executables. instarfs and instarfs-mount are
// the same package: built with the mountexec tag, instarfs links no FUSE
// library and executes instarfs-mount for the mount command.
var Executables = []Executable{
	{Name: "instarfs", Package: "instarfs/cmd/instarfs", Tags: "mountexec"},
	{Name: "instarfs-mount", Package: "instarfs/cmd/instarfs"},
	{Name: "instarfs-worker", Package: "instarfs/cmd/instarfs-worker"},
}

// Build builds the executables of the module whose root is root (as a path
// from the test's package directory, e.g. "..") side by side into a new
// temporary directory that every user may enter, without cgo and copied out
// of the linker's output as the Makefile builds them. It returns instarfs's
// path and a function that removes them.
func Build(root string) (binary string, remove func(), err error) {
	dir, err := os.MkdirTemp("", "instarfs-bin-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	// Installed executables can be run by every user; so can these, for the
	// tests that run them as another user.
	if err := os.Chmod(dir, 0o755); err != nil {
		remove()
		return "", nil, err
	}
	linked := filepath.Join(dir, "link")
	for _, e := range Executables {
		out := filepath.Join(linked, e.Name)
		build := exec.Command("go", "build", "-tags", e.Tags, "-o", out, e.Package)
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := build.CombinedOutput(); err != nil {
			remove()
			return "", nil, fmt.Errorf("building %s: %v\n%s", e.Name, err, msg)
		}
		if err := install(out, filepath.Join(dir, e.Name)); err != nil {
			remove()
			return "", nil, err
		}
	}
	if err := os.RemoveAll(linked); err != nil {
		remove()
		return "", nil, err
	}
	return filepath.Join(dir, "instarfs"), remove, nil
}

// install writes a copy of the executable src at dst, as `make install` does.
// The linker writes through a memory mapping, which the page cache holds in
// single pages, and each start of such a file takes more page faults; a
// written copy is cached in large folios (docs/performance.md).
func install(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s: %v", src, err)
	}
	return out.Close()
}
