package errcode

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// codes returns every code of the table, sorted.
func codes() []Code {
	cs := make([]Code, 0, len(table))
	for c := range table {
		cs = append(cs, c)
	}
	slices.Sort(cs)
	return cs
}

// TestEveryCodeHasARow checks that every Code constant of the package has its
// row in the table, and that codes look as users expect them.
func TestEveryCodeHasARow(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "table.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var consts []Code
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			v := s.(*ast.ValueSpec)
			if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Code" {
				continue
			}
			lit := v.Values[0].(*ast.BasicLit)
			consts = append(consts, Code(strings.Trim(lit.Value, `"`)))
		}
	}
	slices.Sort(consts)
	if !slices.Equal(consts, codes()) {
		t.Errorf("the Code constants and the table's codes differ:\nconstants %v\ntable     %v", consts, codes())
	}
	valid := regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)
	for _, c := range codes() {
		if !valid.MatchString(string(c)) {
			t.Errorf("%s is not an upper-case name", c)
		}
		if table[c].what == "" || strings.Contains(table[c].what, "\n") {
			t.Errorf("%s: meaning %q is not one line", c, table[c].what)
		}
		if c.Errno() == 0 {
			t.Errorf("%s has no errno", c)
		}
		if c.BadImage() && !c.FromWorker() {
			t.Errorf("%s says an image is bad, which only the worker can tell", c)
		}
	}
}

// TestRoles pins the roles that the host's behaviour rests on.
func TestRoles(t *testing.T) {
	for _, c := range codes() {
		// The probe shows a file as an image whose files say why it is
		// refused for these codes, and hides it for the others.
		wantBad := strings.HasPrefix(string(c), "QCOW2_") || strings.HasPrefix(string(c), "VMDK_") || c == ImageTooLarge
		if c.BadImage() != wantBad {
			t.Errorf("%s: BadImage() = %v, want %v", c, c.BadImage(), wantBad)
		}
	}
	// The probe asks again after these, and only these.
	var transient []Code
	for _, c := range codes() {
		if c.Transient() {
			transient = append(transient, c)
		}
	}
	if want := []Code{Internal, SandboxUnavailable, WorkerCrashed, WorkerProtocol, WorkerTimeout}; !slices.Equal(transient, want) {
		t.Errorf("transient codes %v, want %v", transient, want)
	}
	// What only the host can know: the path policy, locks, the mount, how a
	// worker ended, what the host checks before a worker runs.
	for _, c := range []Code{
		NotFound, BackingPathOutsideRoot, BackingProtocol, BackingChainTooDeep, BackingChainLoop, RawNotInferred,
		ImageInUse, NotRegularFile, ImageChanged, NameTooLong, AmbiguousName, SandboxViolation, WorkerCrashed,
		WorkerTimeout, ChainBusy, MountFailed, ChainChanged, NoBackingFile, BaseNotInChain, RebaseCreatesLoop,
		"NO_SUCH_CODE", "",
	} {
		if c.FromWorker() {
			t.Errorf("a worker may send %q", c)
		}
	}
	for _, c := range []Code{Qcow2Corrupt, VmdkCorrupt, ReadFailed, WriteFailed, BadArguments, WorkerProtocol, SandboxUnavailable, Internal} {
		if !c.FromWorker() {
			t.Errorf("a worker may not send %s", c)
		}
	}
}

func TestErrno(t *testing.T) {
	tests := []struct {
		err  error
		want syscall.Errno
	}{
		{New(BadArguments, "x"), syscall.EINVAL},
		{New(NoBackingFile, "x"), syscall.EINVAL},
		{New(FormatNotDetected, "x"), syscall.EINVAL},
		{New(BackingNotFound, "x"), syscall.ENOENT},
		{New(BackingPathOutsideRoot, "x"), syscall.EPERM},
		{New(BackingProtocol, "x"), syscall.EPERM},
		{New(ImageInUse, "x"), syscall.EBUSY},
		{New(ChainBusy, "x"), syscall.EBUSY},
		{New(Cancelled, "x"), syscall.EINTR},
		{New(DocumentTooLarge, "x"), syscall.EFBIG},
		{New(ImageTooLarge, "x"), syscall.EFBIG},
		{New(Qcow2Corrupt, "x"), syscall.EIO},
		{New(RepairUnsupported, "x"), syscall.EOPNOTSUPP},
		{New(RepairNeedsRebuild, "x"), syscall.EIO},
		{fmt.Errorf("opening: %w", New(NameTooLong, "x")), syscall.ENAMETOOLONG},
		{New("NO_SUCH_CODE", "x"), syscall.EIO},
		{errors.New("plain"), syscall.EIO},
	}
	for _, tt := range tests {
		if got := Of(tt.err).Errno(); got != tt.want {
			t.Errorf("Of(%v).Errno() = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// errnos names the errnos the docs use.
var errnos = map[string]syscall.Errno{
	"EINVAL": syscall.EINVAL, "ENAMETOOLONG": syscall.ENAMETOOLONG, "ENOENT": syscall.ENOENT,
	"EPERM": syscall.EPERM, "EBUSY": syscall.EBUSY, "EINTR": syscall.EINTR, "ECANCELED": syscall.ECANCELED,
	"EOPNOTSUPP": syscall.EOPNOTSUPP, "EFBIG": syscall.EFBIG, "EROFS": syscall.EROFS, "EIO": syscall.EIO,
}

// nameOf is the name of e in errnos.
func nameOf(e syscall.Errno) string {
	for name, v := range errnos {
		if v == e {
			return name
		}
	}
	return e.Error()
}

func errnoNamed(t *testing.T, name string) syscall.Errno {
	t.Helper()
	e, ok := errnos[name]
	if !ok {
		t.Fatalf("the docs name errno %s, which this test does not know", name)
	}
	return e
}

var backquoted = regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")

// tableRows returns the cells of the rows of the first Markdown table after
// the line heading in doc, without the header and separator rows.
func tableRows(t *testing.T, doc, heading string) [][]string {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if heading != "" {
		i := strings.Index(text, "\n"+heading+"\n")
		if i < 0 {
			t.Fatalf("%s has no line %q", doc, heading)
		}
		text = text[i:]
	}
	var rows [][]string
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "|") {
			if len(rows) > 0 {
				break
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	if len(rows) < 3 {
		t.Fatalf("%s: no table after %q", doc, heading)
	}
	return rows[2:]
}

// TestErrorsDoc checks that docs/errors.md lists exactly the codes of the
// table, and that the errno it gives for some ("mount: `EBUSY`") is theirs.
func TestErrorsDoc(t *testing.T) {
	mountErrno := regexp.MustCompile("mount: [^`]*`(E[A-Z]+)`")
	var listed []Code
	for _, cells := range tableRows(t, "../docs/errors.md", "") {
		m := backquoted.FindStringSubmatch(cells[0])
		if m == nil || m[0] != cells[0] {
			t.Errorf("docs/errors.md: a row whose first cell %q is not a code", cells[0])
			continue
		}
		c := Code(m[1])
		listed = append(listed, c)
		if _, ok := table[c]; !ok {
			t.Errorf("docs/errors.md lists %s, which is not a code", c)
			continue
		}
		if e := mountErrno.FindStringSubmatch(cells[1]); e != nil && errnoNamed(t, e[1]) != c.Errno() {
			t.Errorf("docs/errors.md says the mount returns %s for %s; it returns %s", e[1], c, nameOf(c.Errno()))
		}
	}
	slices.Sort(listed)
	if d := slices.Compact(slices.Clone(listed)); len(d) != len(listed) {
		t.Errorf("docs/errors.md lists a code twice: %v", listed)
	}
	for _, c := range codes() {
		if !slices.Contains(listed, c) {
			t.Errorf("docs/errors.md does not list %s (%s)", c, table[c].what)
		}
	}
}

// TestMountErrnoDoc checks the errno table of docs/mount.md against the
// table: every code it lists under an errno has that errno, and every code it
// does not list has EIO ("every other code").
func TestMountErrnoDoc(t *testing.T) {
	listed := map[Code]bool{}
	everyOther := false
	for _, cells := range tableRows(t, "../docs/mount.md", "### Errno") {
		name := strings.Trim(cells[0], "`")
		errno := errnoNamed(t, name)
		codes := cells[len(cells)-1]
		if strings.Contains(codes, "every other code") {
			if errno != syscall.EIO {
				t.Errorf("docs/mount.md: every other code has %s, not EIO", name)
			}
			everyOther = true
		}
		for _, m := range backquoted.FindAllStringSubmatch(codes, -1) {
			c := Code(m[1])
			if _, ok := table[c]; !ok {
				t.Errorf("docs/mount.md lists %s under %s, which is not a code", c, name)
				continue
			}
			if name == "ECANCELED" && c == Cancelled {
				// A write restarted after EINTR gets ECANCELED rather than
				// EINTR for a cancelled job (fs/control.go), so that it is
				// not restarted again.
				continue
			}
			listed[c] = true
			if c.Errno() != errno {
				t.Errorf("docs/mount.md lists %s under %s; the mount returns %s", c, name, nameOf(c.Errno()))
			}
		}
	}
	if !everyOther {
		t.Errorf("docs/mount.md has no row for every other code")
	}
	for _, c := range codes() {
		if !listed[c] && c.Errno() != syscall.EIO {
			t.Errorf("docs/mount.md does not list %s, for which the mount returns %s", c, nameOf(c.Errno()))
		}
	}
}
