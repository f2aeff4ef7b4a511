package qemutest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"instarfs/proto"
)

// Result is what a qemu command printed and how it exited.
type Result struct {
	Stdout, Stderr []byte
	Code           int // the exit status; -1 when its context ended it
}

// Command returns the command that runs the oracle's tool ("qemu-img" or
// "qemu-io") with args in dir, for a caller that starts it itself (a qemu-io
// holding a lock) or bounds its time with ctx. It fails the test when an
// image among args names a file outside its scratch directory.
func (o Oracle) Command(ctx context.Context, t testing.TB, dir, tool string, args ...string) *exec.Cmd {
	t.Helper()
	bin := o.ImgBin
	switch tool {
	case "qemu-img":
	case "qemu-io":
		bin = o.IOBin
	default:
		t.Fatalf("qemutest: unknown tool %q", tool)
	}
	if err := guard(dir, args); err != nil {
		t.Fatalf("%s %s: %v", tool, strings.Join(args, " "), err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	return cmd
}

func (o Oracle) run(t testing.TB, dir, tool string, args []string) Result {
	t.Helper()
	return runCmd(t, o.Command(context.Background(), t, dir, tool, args...))
}

// runCmd runs cmd (from Command) and returns its result. A command that
// cannot start fails the test.
func runCmd(t testing.TB, cmd *exec.Cmd) Result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		t.Fatalf("running %s: %v", strings.Join(cmd.Args, " "), err)
	}
	return r
}

// Run runs qemu-img with args in dir ("" for the test's working directory)
// and returns its result, whatever its exit status.
func (o Oracle) Run(t testing.TB, dir string, args ...string) Result {
	t.Helper()
	return o.run(t, dir, "qemu-img", args)
}

// RunIO runs qemu-io with args in dir and returns its result, whatever its
// exit status.
func (o Oracle) RunIO(t testing.TB, dir string, args ...string) Result {
	t.Helper()
	return o.run(t, dir, "qemu-io", args)
}

func must(t testing.TB, tool string, args []string, r Result) []byte {
	t.Helper()
	if r.Code != 0 {
		t.Fatalf("%s %s: exit %d\n%s%s", tool, strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// Img runs qemu-img with args in dir and returns its standard output; it
// fails the test unless qemu-img succeeds.
func (o Oracle) Img(t testing.TB, dir string, args ...string) []byte {
	t.Helper()
	return must(t, "qemu-img", args, o.Run(t, dir, args...))
}

// IO runs the qemu-io commands cmds on the image at path, opened as format
// (probed when ""), and fails the test unless they succeed.
func (o Oracle) IO(t testing.TB, path, format string, cmds ...string) {
	t.Helper()
	if len(cmds) == 0 {
		return
	}
	var args []string
	if format != "" {
		args = append(args, "-f", format)
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	must(t, "qemu-io", args, o.RunIO(t, "", args...))
}

// Create makes an image of format and size at path with the -o options
// opts (compat=0.10, cluster_size=512, backing_file=NAME …).
func (o Oracle) Create(t testing.TB, path, format, size string, opts ...string) {
	t.Helper()
	args := []string{"create", "-q", "-f", format}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	o.Img(t, "", append(args, path, size)...)
}

// Map returns `qemu-img map --output=json` of the image at path, opened as
// format (probed when "", as for a json: filename from Alone), with extra
// arguments args (-U, --start-offset …) before the name.
func (o Oracle) Map(t testing.TB, path, format string, args ...string) []proto.MapEntry {
	t.Helper()
	a := append([]string{"map", "--output=json"}, args...)
	if format != "" {
		a = append(a, "-f", format)
	}
	out := o.Img(t, "", append(a, path)...)
	var m []proto.MapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("qemu-img map %s: %v\n%s", path, err, out)
	}
	return m
}

// Check runs `qemu-img check` with args (--output=json, -r leaks …) on the
// image at path, opened as format, and returns its result: exit status 0
// clean, 2 corrupt, 3 leaks only.
func (o Oracle) Check(t testing.TB, path, format string, args ...string) Result {
	t.Helper()
	a := append(append([]string{"check"}, args...), "-f", format, path)
	return o.Run(t, "", a...)
}

// Compare runs `qemu-img compare` on the images at a and b, each read
// through its own backing chain in the format its name says (FormatOf):
// exit status 0 same content, 1 different, 2 an error.
func (o Oracle) Compare(t testing.TB, a, b string) Result {
	t.Helper()
	return o.Run(t, "", "compare", "-f", FormatOf(a), "-F", FormatOf(b), a, b)
}

// Run is System.Run.
func Run(t testing.TB, dir string, args ...string) Result {
	t.Helper()
	return System.Run(t, dir, args...)
}

// RunIO is System.RunIO.
func RunIO(t testing.TB, dir string, args ...string) Result {
	t.Helper()
	return System.RunIO(t, dir, args...)
}

// Img is System.Img.
func Img(t testing.TB, dir string, args ...string) []byte {
	t.Helper()
	return System.Img(t, dir, args...)
}

// IO is System.IO.
func IO(t testing.TB, path, format string, cmds ...string) {
	t.Helper()
	System.IO(t, path, format, cmds...)
}

// Create is System.Create.
func Create(t testing.TB, path, format, size string, opts ...string) {
	t.Helper()
	System.Create(t, path, format, size, opts...)
}

// Map is System.Map.
func Map(t testing.TB, path, format string, args ...string) []proto.MapEntry {
	t.Helper()
	return System.Map(t, path, format, args...)
}

// Check is System.Check.
func Check(t testing.TB, path, format string, args ...string) Result {
	t.Helper()
	return System.Check(t, path, format, args...)
}

// Compare is System.Compare.
func Compare(t testing.TB, a, b string) Result {
	t.Helper()
	return System.Compare(t, a, b)
}

// FormatOf names an image's format by its file name, as the tests name
// them: .vmdk, .raw and .img are what they say, anything else qcow2.
func FormatOf(name string) string {
	switch filepath.Ext(name) {
	case ".vmdk":
		return "vmdk"
	case ".raw", ".img":
		return "raw"
	}
	return "qcow2"
}

// Alone is the json: filename under which qemu opens the image at path, of
// format, without its backing file.
func Alone(format, path string) string {
	b, _ := json.Marshal(map[string]any{
		"driver":  format,
		"backing": nil,
		"file":    map[string]any{"driver": "file", "filename": path},
	})
	return "json:" + string(b)
}

// SameBytes fails the test unless the files at a and b hold the same bytes
// (a byte-identity test: what qemu wrote and what instarfs wrote), saying
// where they first differ.
func SameBytes(t testing.TB, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(x, y) {
		return
	}
	for i := range min(len(x), len(y)) {
		if x[i] != y[i] {
			t.Fatalf("%s and %s differ first at byte %#x (%#02x and %#02x); sizes %d and %d", a, b, i, x[i], y[i], len(x), len(y))
		}
	}
	t.Fatalf("%s is %d bytes, %s is %d bytes", a, len(x), b, len(y))
}
