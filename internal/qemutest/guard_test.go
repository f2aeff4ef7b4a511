package qemutest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// patch replaces old by new (of the same length) in the file at path: how
// the test writes a name qemu must never be let open.
func patch(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(old) != len(new) || !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s: cannot replace %q by %q", path, old, new)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGuard builds images whose names lead in and out of the scratch
// directory (with qemu-img create -u, which opens no backing, and by
// patching bytes) and checks which runs the guard lets qemu make.
func TestGuard(t *testing.T) {
	NeedQemu(t)
	dir := t.TempDir()
	in := func(name string) string { return filepath.Join(dir, name) }
	Create(t, in("base.qcow2"), "qcow2", "1M")
	Create(t, in("mid.qcow2"), "qcow2", "1M", "backing_file=base.qcow2", "backing_fmt=qcow2")
	Create(t, in("top.qcow2"), "qcow2", "1M", "backing_file=mid.qcow2", "backing_fmt=qcow2")
	Img(t, dir, "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", "abs.qcow2", "1M")
	Img(t, dir, "create", "-q", "-f", "qcow2", "-u", "-b", "../../../../../../etc/passwd", "-F", "raw", "rel.qcow2", "1M")
	Img(t, dir, "create", "-q", "-f", "qcow2", "-u", "-b", "nbd:localhost:1", "-F", "raw", "proto.qcow2", "1M")
	Img(t, dir, "create", "-q", "-f", "qcow2", "-u", "-b", "abs.qcow2", "-F", "qcow2", "deep.qcow2", "1M")
	if err := os.Symlink("/etc/passwd", in("link.raw")); err != nil {
		t.Fatal(err)
	}
	Img(t, dir, "create", "-q", "-f", "qcow2", "-u", "-b", "link.raw", "-F", "raw", "vialink.qcow2", "1M")
	Create(t, in("data.qcow2"), "qcow2", "1M", "data_file=aaaaaaaaaaa")
	Create(t, in("outdata.qcow2"), "qcow2", "1M", "data_file=bbbbbbbbbbb")
	patch(t, in("outdata.qcow2"), "bbbbbbbbbbb", "/etc/passwd")
	Create(t, in("base.vmdk"), "vmdk", "1M")
	Create(t, in("top.vmdk"), "vmdk", "1M", "backing_file=base.vmdk", "backing_fmt=vmdk")
	Create(t, in("out.vmdk"), "vmdk", "1M", "backing_file=base.vmdk", "backing_fmt=vmdk")
	patch(t, in("out.vmdk"), `"base.vmdk"`, `"/etc/pass"`)
	desc := "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"%s\" 0\n"
	for name, extent := range map[string]string{"flat.vmdk": "base.qcow2", "outflat.vmdk": "/etc/passwd"} {
		if err := os.WriteFile(in(name), []byte(fmt.Sprintf(desc, extent)), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		ok   bool
	}{
		{"a chain inside", []string{"info", "--backing-chain", "top.qcow2"}, true},
		{"an absolute path to the chain", []string{"check", in("top.qcow2")}, true},
		{"a backing outside", []string{"info", "abs.qcow2"}, false},
		{"a relative backing leading out", []string{"info", "rel.qcow2"}, false},
		{"a protocol", []string{"info", "proto.qcow2"}, false},
		{"outside, deeper in the chain", []string{"map", "--output=json", "deep.qcow2"}, false},
		{"a symlink leading out", []string{"info", "vialink.qcow2"}, false},
		{"the image not opened", []string{"create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", "new.qcow2", "1M"}, true},
		{"alone", []string{"map", Alone("qcow2", in("abs.qcow2"))}, true},
		{"with its backing", []string{"map", `json:{"driver":"qcow2","file":{"driver":"file","filename":"` + in("abs.qcow2") + `"}}`}, false},
		{"a data file inside", []string{"check", "data.qcow2"}, true},
		{"a data file outside", []string{"check", "outdata.qcow2"}, false},
		{"a vmdk chain inside", []string{"info", "top.vmdk"}, true},
		{"a vmdk parent outside", []string{"info", "out.vmdk"}, false},
		{"an extent inside", []string{"info", "flat.vmdk"}, true},
		{"an extent outside", []string{"info", "outflat.vmdk"}, false},
		{"rebase onto a file inside", []string{"rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"}, true},
		{"rebase onto a file outside", []string{"rebase", "-b", "/etc/passwd", "-F", "raw", "top.qcow2"}, false},
		{"unsafe rebase onto a name outside", []string{"rebase", "-u", "-b", "/etc/passwd", "-F", "raw", "top.qcow2"}, true},
		{"create onto a backing outside", []string{"create", "-f", "qcow2", "-b", "../../../../../../etc/passwd", "-F", "raw", "new2.qcow2"}, false},
		{"qemu-io commands", []string{"-c", "read 0 512", "-c", "write -P 1 0 512", "top.qcow2"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := guard(dir, tc.args)
			if (err == nil) != tc.ok {
				t.Fatalf("guard(%q) = %v, want ok %v", tc.args, err, tc.ok)
			}
		})
	}
}
