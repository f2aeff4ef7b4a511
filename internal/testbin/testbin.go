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
// the test's package directory, e.g. "..") into dir, without cgo as the
// Makefile builds it, and returns the binary's path.
func Build(dir, root string) (string, error) {
	binary := filepath.Join(dir, "instarfs")
	build := exec.Command("go", "build", "-o", binary, "./cmd/instarfs")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building instarfs: %v\n%s", err, out)
	}
	return binary, nil
}
