package chainmodel

import (
	"os"
	"path/filepath"
	"testing"

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
	p, err := NewPolicy(images)
	if err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(images, "sub")
	tests := []struct {
		dir, name string
		code      string // "" for success
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
		{images, ".", errcode.BackingNotFound},
	}
	for _, tt := range tests {
		f, _, err := p.Open(tt.dir, tt.name, false)
		if f != nil {
			f.Close()
		}
		if got := codeOf(err); got != tt.code {
			t.Errorf("Open(%q, %q) = %v (code %q), want code %q", tt.dir, tt.name, err, got, tt.code)
		}
	}
}

func codeOf(err error) string {
	if err == nil {
		return ""
	}
	return errcode.Code(err)
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
