// Package qemutest runs qemu-img and qemu-io, the oracles tests compare
// instarfs with.
//
// The system's qemu-img (Debian 12's 7.2) is always one: the package-level
// functions run it. `make oracles` adds more, each a directory under
// build/oracles with bin/qemu-img and bin/qemu-io (testdata/mkoracles.sh
// builds Debian 13's 10.0 there without touching the system's packages);
// Oracles lists them all and Each runs a differential subtest against each.
//
// Every run is guarded: qemu follows the backing names (and vmdk extents and
// qcow2 data files) of the images it opens, and writes through them, so a
// run whose images name a file outside their test's scratch directory fails
// the test before qemu starts.
package qemutest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"testing"
)

// Oracle is one qemu-img build.
type Oracle struct {
	Name    string // "system", or the directory's name under build/oracles
	Version string // as `qemu-img --version` prints it, e.g. "7.2.22"
	ImgBin  string // the qemu-img command
	IOBin   string // the qemu-io command
}

// System is the system's qemu-img and qemu-io, found on PATH.
var System = Oracle{Name: "system", ImgBin: "qemu-img", IOBin: "qemu-io"}

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

// Installed returns an error unless the system's qemu-img and qemu-io are
// installed, for a TestMain; tests call NeedQemu.
func Installed() error {
	for _, tool := range []string{System.ImgBin, System.IOBin} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found; run `make test`, which installs qemu-utils", tool)
		}
	}
	return nil
}

// NeedQemu fails the test unless the system's qemu-img and qemu-io are
// installed: `make test` installs them.
func NeedQemu(t testing.TB) {
	t.Helper()
	if err := Installed(); err != nil {
		t.Fatal(err)
	}
}

var found struct {
	sync.Once
	all []Oracle
}

// Oracles returns every qemu-img build present, the system's first. It fails
// the test when the system has none.
func Oracles(t testing.TB) []Oracle {
	t.Helper()
	NeedQemu(t)
	found.Do(func() {
		sys := System
		sys.Version, _ = version(sys.ImgBin)
		found.all = []Oracle{sys}
		dir := OraclesDir()
		ents, _ := os.ReadDir(dir)
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
		for _, e := range ents {
			bin := filepath.Join(dir, e.Name(), "bin")
			if v, ok := version(filepath.Join(bin, "qemu-img")); ok {
				found.all = append(found.all, Oracle{Name: e.Name(), Version: v,
					ImgBin: filepath.Join(bin, "qemu-img"), IOBin: filepath.Join(bin, "qemu-io")})
			}
		}
	})
	return found.all
}

// Each runs f as a subtest "qemu-img-VERSION" for every oracle present: a
// differential test states its comparison once and runs it against 7.2 and
// every build of `make oracles`.
func Each(t *testing.T, f func(t *testing.T, o Oracle)) {
	t.Helper()
	for _, o := range Oracles(t) {
		t.Run("qemu-img-"+o.Version, func(t *testing.T) { f(t, o) })
	}
}
