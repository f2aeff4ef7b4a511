// Package testbin builds the instarfs executables for the tests that run them
// end to end.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Build builds instarfs and its worker, instarfs-worker, of the module whose
// root is root (as a path from the test's package directory, e.g. "..") side
// by side into a new temporary directory, without cgo as the Makefile builds
// them. It returns instarfs's path and a function that removes both.
func Build(root string) (binary string, remove func(), err error) {
	dir, err := os.MkdirTemp("", "instarfs-bin-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	binary = filepath.Join(dir, "instarfs")
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/instarfs", "./cmd/instarfs-worker")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		remove()
		return "", nil, fmt.Errorf("building instarfs: %v\n%s", err, out)
	}
	return binary, remove, nil
}
