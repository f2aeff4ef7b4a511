package chainmodel

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
)

func TestPolicyOpen(t *testing.T) {
	root := t.TempDir()
	images := filepath.Join(root, "images")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{images, filepath.Join(images, "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string) {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(images, "base.img"))
	write(filepath.Join(images, "sub", "mid.img"))
	write(filepath.Join(outside, "secret.txt"))
	if err := os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(images, "escape.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("base.img", filepath.Join(images, "inside.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/proc/self/root/etc/passwd", filepath.Join(images, "magic.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/"+filepath.Join(images, "base.img"), filepath.Join(images, "absolute.img")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(images, "fifo.img"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("fifo.img", filepath.Join(images, "to-fifo.img")); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(images, "sock.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	device := errcode.NotRegularFile
	if err := unix.Mknod(filepath.Join(images, "null.img"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Logf("mknod: %v; a device node is not tested", err)
		device = errcode.BackingNotFound
	}
	p, err := NewPolicy(images)
	if err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(images, "sub")
	tests := []struct {
		dir, name string
		code      errcode.Code // "" for success
	}{
		{images, "base.img", ""},
		{sub, "../base.img", ""},
		{images, "sub/mid.img", ""},
		{images, filepath.Join(images, "base.img"), ""},
		{images, "inside.img", ""},
		{images, "missing.img", errcode.BackingNotFound},
		{images, "../outside/secret.txt", errcode.BackingPathOutsideRoot},
		{sub, "../../outside/secret.txt", errcode.BackingPathOutsideRoot},
		{images, filepath.Join(outside, "secret.txt"), errcode.BackingPathOutsideRoot},
		{images, "/etc/passwd", errcode.BackingPathOutsideRoot},
		{images, "escape.img", errcode.BackingPathOutsideRoot},
		{images, "magic.img", errcode.BackingPathOutsideRoot},
		{images, `json:{"driver":"raw","file":{"filename":"/etc/passwd"}}`, errcode.BackingProtocol},
		{images, "nbd://localhost/x", errcode.BackingProtocol},
		{images, "file:base.img", errcode.BackingProtocol},
		{images, ".", errcode.NotRegularFile},
		{images, "sub", errcode.NotRegularFile},
		{images, "absolute.img", errcode.BackingPathOutsideRoot},
		{images, "fifo.img", errcode.NotRegularFile},
		{images, "to-fifo.img", errcode.NotRegularFile},
		{images, "sock.img", errcode.NotRegularFile},
		{images, "null.img", device},
		{images, strings.Repeat("n", MaxBackingName+1), errcode.BackingNameTooLong},
	}
	for _, tt := range tests {
		start := time.Now()
		f, _, _, err := p.OpenName(tt.dir, tt.name)
		if f != nil {
			f.Close()
		}
		if got := codeOf(err); got != tt.code {
			t.Errorf("OpenName(%q, %q) = %v (code %q), want code %q", tt.dir, tt.name, err, got, tt.code)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("OpenName(%q, %q) took %v", tt.dir, tt.name, d)
		}
	}
}

// TestPolicyOpenIdentity checks that Open refuses a file other than the one
// the caller showed, and a file of the wrong kind.
func TestPolicyOpenIdentity(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a.img", "b.img"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := NewPolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a := Loc{Root: p.Roots[0], Rel: "a.img"}
	st, err := p.Stat(a, How{})
	if err != nil {
		t.Fatal(err)
	}
	id := IDOf(&st)
	for _, acc := range []Access{Path, Read, ReadWrite} {
		f, _, err := p.Open(a, How{Access: acc, Want: &id})
		if err != nil {
			t.Fatalf("access %d: %v", acc, err)
		}
		if fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); acc != Path && fl&unix.O_NONBLOCK != 0 {
			t.Errorf("access %d: O_NONBLOCK left set", acc)
		}
		f.Close()
	}
	if err := os.Rename(filepath.Join(dir, "b.img"), filepath.Join(dir, "a.img")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Stat(a, How{Want: &id}); codeOf(err) != errcode.ImageChanged {
		t.Errorf("a replaced file: %v, want IMAGE_CHANGED", err)
	}
	if _, err := p.Stat(Loc{Root: p.Roots[0], Rel: "."}, How{Dir: true}); err != nil {
		t.Errorf("the root as a directory: %v", err)
	}
	if _, err := p.Stat(a, How{Dir: true}); codeOf(err) != errcode.NotRegularFile {
		t.Errorf("a file as a directory: %v, want NOT_REGULAR_FILE", err)
	}
}

// TestPolicyAdmit checks which backing names may be written.
func TestPolicyAdmit(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(dir, "fifo.img"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "escape.img")); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tests := []struct {
		name string
		code errcode.Code
	}{
		{"not-yet.qcow2", ""},
		{"sub/not-yet.qcow2", ""},
		{filepath.Join(dir, "not-yet.qcow2"), ""},
		{"/etc/shadow", errcode.BackingPathOutsideRoot},
		{"../x.qcow2", errcode.BackingPathOutsideRoot},
		{`json:{"file.filename":"/etc/shadow"}`, errcode.BackingProtocol},
		{"nbd://host/x", errcode.BackingProtocol},
		{"Gluster+unix:x", errcode.BackingProtocol},
		{"a.b-c:x.qcow2", errcode.BackingProtocol},
		{"1nbd:x.qcow2", ""},  // a scheme starts with a letter
		{":x.qcow2", ""},      // and is not empty
		{"sub/a:b.qcow2", ""}, // a colon after a slash
		{"a_b:c.qcow2", ""},   // '_' is not a scheme's
		{"escape.img", errcode.BackingPathOutsideRoot},
		{"fifo.img", errcode.NotRegularFile},
	}
	for _, tt := range tests {
		if got := codeOf(p.Admit(dir, tt.name)); got != tt.code {
			t.Errorf("Admit(%q) = %q, want %q", tt.name, got, tt.code)
		}
	}
}

func codeOf(err error) errcode.Code {
	if err == nil {
		return ""
	}
	return errcode.Of(err)
}

func TestFullBackingName(t *testing.T) {
	tests := []struct{ referrer, backing, want string }{
		{"ov.qcow2", "base.qcow2", "base.qcow2"},
		{"sub/ov.qcow2", "base.qcow2", "sub/base.qcow2"},
		{"sub/ov.qcow2", "../base.qcow2", "sub/../base.qcow2"},
		{"/a/ov.qcow2", "/b/base.qcow2", "/b/base.qcow2"},
	}
	for _, tt := range tests {
		if got := FullBackingName(tt.referrer, tt.backing); got != tt.want {
			t.Errorf("FullBackingName(%q, %q) = %q, want %q", tt.referrer, tt.backing, got, tt.want)
		}
	}
}

// TestPolicyPlaceDir checks that relative paths are taken against the
// policy's Dir, whatever the working directory is, and against the working
// directory without one (this package's directory, outside the root).
func TestPolicyPlaceDir(t *testing.T) {
	root := t.TempDir()
	images := filepath.Join(root, "images")
	if err := os.MkdirAll(filepath.Join(images, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(images)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	inDir := p
	inDir.Dir = images
	inSub := p
	inSub.Dir = filepath.Join(images, "sub")
	tests := []struct {
		p      Policy
		path   string
		rel    string
		placed bool
	}{
		{inDir, "a.qcow2", "a.qcow2", true},
		{inDir, "sub/a.qcow2", "sub/a.qcow2", true},
		{inDir, "sub/", "sub/", true},
		{inDir, ".", ".", true},
		{inDir, "../a.qcow2", "", false},
		{inDir, filepath.Join(images, "b.qcow2"), "b.qcow2", true},
		{inSub, "a.qcow2", "sub/a.qcow2", true},
		{inSub, "../a.qcow2", "a.qcow2", true},
		{inSub, "../../a.qcow2", "", false},
		{p, "a.qcow2", "", false},
		{p, filepath.Join(images, "a.qcow2"), "a.qcow2", true},
	}
	for _, tt := range tests {
		loc, ok := tt.p.Place(tt.path)
		if ok != tt.placed || ok && (loc.Rel != tt.rel || loc.Root != p.Roots[0]) {
			t.Errorf("Dir %q: Place(%q) = %q, %v; want %q, %v", tt.p.Dir, tt.path, loc.Rel, ok, tt.rel, tt.placed)
		}
	}
	loc, err := inSub.Locate("", "../a.qcow2")
	if err != nil || loc.Rel != "a.qcow2" {
		t.Errorf("Locate against a relative referrer: %q, %v", loc.Rel, err)
	}
}

// TestFileState: the state names the file by device and inode, and changes
// with its size and times; String renders every part.
func TestFileState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	s := StateOf(&st)
	if s.ID != IDOf(&st) || s.Size != 1 || s.Mtime != st.Mtim || s.Ctime != st.Ctim {
		t.Fatalf("StateOf = %+v for %+v", s, st)
	}
	want := fmt.Sprintf("%d:%d:1:%d.%d:%d.%d", st.Dev, st.Ino, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
	if got := s.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if err := os.WriteFile(path, []byte("ab"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if StateOf(&st) == s {
		t.Error("the state did not change with the file")
	}
}
