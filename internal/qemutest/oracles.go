// Package qemutest finds the qemu-img builds that tests compare instarfs
// with. The system's qemu-img (Debian 12's 7.2) is always one; `make oracles`
// adds more, each a directory under build/oracles with bin/qemu-img and
// bin/qemu-io (testdata/mkoracles.sh builds Debian 13's 10.0 there without
// touching the system's packages).
package qemutest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"testing"
)

// Oracle is one qemu-img build.
type Oracle struct {
	Name    string // "system", or the directory's name under build/oracles
	Version string // as `qemu-img --version` prints it, e.g. "7.2.22"
	Img, IO string // the qemu-img and qemu-io commands
}

// Major is the oracle's major version number, 0 when unknown.
func (o Oracle) Major() int {
	n := 0
	for _, c := range o.Version {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// OraclesDir is where `make oracles` puts the extra oracles: build/oracles at
// the module's root, or $INSTARFS_ORACLES when set.
func OraclesDir() string {
	if d := os.Getenv("INSTARFS_ORACLES"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "build", "oracles")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

var versionRE = regexp.MustCompile(`qemu-img version ([0-9][0-9.]*)`)

func version(img string) (string, bool) {
	out, err := exec.Command(img, "--version").Output()
	if err != nil {
		return "", false
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", false
	}
	return string(m[1]), true
}

// Oracles returns every qemu-img build present, the system's first. It fails
// the test when the system has none: `make test` installs it.
func Oracles(t testing.TB) []Oracle {
	t.Helper()
	sys, ok := version("qemu-img")
	if !ok {
		t.Fatal("qemu-img not found; run `make test`, which installs qemu-utils")
	}
	all := []Oracle{{Name: "system", Version: sys, Img: "qemu-img", IO: "qemu-io"}}
	dir := OraclesDir()
	ents, _ := os.ReadDir(dir)
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		img := filepath.Join(dir, e.Name(), "bin", "qemu-img")
		if v, ok := version(img); ok {
			all = append(all, Oracle{Name: e.Name(), Version: v, Img: img, IO: filepath.Join(dir, e.Name(), "bin", "qemu-io")})
		}
	}
	return all
}
