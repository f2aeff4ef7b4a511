// Package testbin builds the instarfs binary for the tests that run it end to
// end.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Build builds the command of the module whose root is root (as a path from
// the test's package directory, e.g. "..") into a new temporary directory,
// without cgo as the Makefile builds it. It returns the binary's path and a
// function that removes it.
func Build(root string) (binary string, remove func(), err error) {
	dir, err := os.MkdirTemp("", "instarfs-bin-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	binary = filepath.Join(dir, "instarfs")
	build := exec.Command("go", "build", "-o", binary, "./cmd/instarfs")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		remove()
		return "", nil, fmt.Errorf("building instarfs: %v\n%s", err, out)
	}
	return binary, remove, nil
}
