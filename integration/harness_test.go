// Package integration runs the instarfs binary end to end — real worker, real
// sandbox — and compares what it prints with qemu-img, the oracle.
package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/internal/testbin"
)

var (
	binary    string // the instarfs binary under test
	imagesDir string // the images testdata/mkimages.sh built
	manifest  []manifestEntry
)

type manifestEntry struct {
	Name, Kind, Secret string
	Notes              map[string]string // key=value tokens: fmt, root, check, code, marker …
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := qemutest.Installed(); err != nil {
		fmt.Println("integration:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "instarfs-integration-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(tmp)
	var remove func()
	if binary, remove, err = testbin.Build(".."); err != nil {
		fmt.Println(err)
		return 1
	}
	defer remove()
	imagesDir = filepath.Join(tmp, "images")
	gen := exec.Command("bash", "../testdata/mkimages.sh", imagesDir)
	if out, err := gen.CombinedOutput(); err != nil {
		fmt.Printf("generating images: %v\n%s", err, out)
		return 1
	}
	if manifest, err = readManifest(filepath.Join(imagesDir, "manifest.tsv")); err != nil {
		fmt.Println(err)
		return 1
	}
	return m.Run()
}

func readManifest(path string) ([]manifestEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []manifestEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cols := append(strings.Split(line, "\t"), "", "", "")
		e := manifestEntry{Name: cols[0], Kind: cols[1], Secret: cols[3], Notes: map[string]string{}}
		for _, tok := range strings.Fields(cols[2]) {
			k, v, _ := strings.Cut(tok, "=")
			e.Notes[k] = v
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

func entries(kind string) []manifestEntry {
	var out []manifestEntry
	for _, e := range manifest {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// result is what a command printed and how it exited.
type result struct {
	stdout, stderr []byte
	code           int
}

// execIn runs a command in dir and returns its output and exit status.
func execIn(t *testing.T, dir, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	return runCmd(t, cmd)
}

// runCmd runs cmd and returns its output and exit status; a command that
// cannot run at all fails the test.
func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	r := resultOf(cmd.Run(), out.Bytes(), errb.Bytes())
	if r.code < 0 {
		t.Fatalf("running %v: %s", cmd.Args, r.stderr)
	}
	return r
}

// resultOf is the result of a finished command: its output, and its exit
// status from err; -1 when it could not run (the error is then in stderr).
func resultOf(err error, stdout, stderr []byte) result {
	r := result{stdout: stdout, stderr: stderr}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		r.code, r.stderr = -1, []byte(err.Error())
	}
	return r
}

// instarfs runs the binary under test on an image of the manifest, with the
// image's root directory allowed, as a user would point it at their image store.
func instarfs(t *testing.T, e manifestEntry, args ...string) result {
	t.Helper()
	args = append([]string{"--allow-dir", filepath.Join(imagesDir, e.Notes["root"])}, args...)
	return execIn(t, imagesDir, binary, args...)
}

// qemuImg runs the system's qemu-img with args in dir (qemutest.Run).
func qemuImg(t testing.TB, dir string, args ...string) result {
	t.Helper()
	return qemuResult(qemutest.Run(t, dir, args...))
}

// qemuIO runs the system's qemu-io with args in dir (qemutest.RunIO).
func qemuIO(t testing.TB, dir string, args ...string) result {
	t.Helper()
	return qemuResult(qemutest.RunIO(t, dir, args...))
}

func qemuResult(r qemutest.Result) result {
	return result{stdout: r.Stdout, stderr: r.Stderr, code: r.Code}
}

// decodeJSON decodes a command's JSON output into a generic value.
func decodeJSON(t *testing.T, what string, r result) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(r.stdout, &v); err != nil {
		t.Fatalf("%s: exit %d, output is not JSON: %v\nstdout: %s\nstderr: %s", what, r.code, err, r.stdout, r.stderr)
	}
	return v
}

// shellIn runs a bash script in dir and fails the test when it fails.
func shellIn(t *testing.T, dir, script string) {
	t.Helper()
	c := exec.Command("bash", "-c", script)
	c.Dir = dir
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

// copyDir copies the regular files of src into dst, keeping holes.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	shellIn(t, src, "cp --sparse=always -p -- * '"+strings.ReplaceAll(dst, "'", `'\''`)+"'/")
}

// runOp runs `instarfs OP ARGS…` in dir, with dir allowed and extra
// environment (INSTARFS_FAULT_AFTER_WRITES for the crash sweeps).
func runOp(t *testing.T, dir string, env []string, op string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"--allow-dir", dir, op}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	return runCmd(t, cmd)
}

// compareImages runs qemu-img compare on two images, each read through its own
// backing chain.
func compareImages(t *testing.T, a, b string) result {
	t.Helper()
	return qemuResult(qemutest.Compare(t, a, b))
}

// checkClean fails unless qemu-img check finds no errors in the image at path
// (leaked clusters allowed when leaksOK). Raw images have nothing to check.
func checkClean(t *testing.T, path string, leaksOK bool) {
	t.Helper()
	format := qemutest.FormatOf(path)
	if format == "raw" {
		return
	}
	r := qemuResult(qemutest.Check(t, path, format))
	if r.code == 0 || leaksOK && r.code == 3 {
		return
	}
	t.Errorf("qemu-img check %s: exit %d\n%s%s", path, r.code, r.stdout, r.stderr)
}
