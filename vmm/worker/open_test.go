package worker

import (
	"os"
	"path/filepath"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/proto"
)

// TestBackingNameIsCString checks that a backing file name or backing format
// with a NUL byte ends at the NUL, as qemu reads them, instead of reaching the
// host (which refuses names with NUL bytes as a protocol violation).
func TestBackingNameIsCString(t *testing.T) {
	qemutest.NeedQemu(t)
	tests := []struct {
		name       string
		backing    string // written at the backing file offset
		format     string // written over the backing format extension's data
		wantName   string
		wantFormat string
	}{
		{name: "plain", backing: "base.qcow2", wantName: "base.qcow2", wantFormat: "qcow2"},
		{name: "nul in name", backing: "base\x00qcow2", wantName: "base", wantFormat: "qcow2"},
		{name: "nul first", backing: "\x00ase.qcow2", wantName: "", wantFormat: ""},
		{name: "nul in format", backing: "base.qcow2", format: "raw\x00\x00", wantName: "base.qcow2", wantFormat: "raw"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sh(t, dir, "qemu-img create -q -f qcow2 base.qcow2 1M && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1M")
			path := filepath.Join(dir, "top.qcow2")
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			hdr := make([]byte, 0x100)
			if _, err := f.ReadAt(hdr, 0); err != nil {
				t.Fatal(err)
			}
			off := int64(hdr[15]) | int64(hdr[14])<<8 // backing_file_offset, small
			if _, err := f.WriteAt([]byte(tt.backing), off); err != nil {
				t.Fatal(err)
			}
			if tt.format != "" {
				// qemu writes the backing format extension first, at 0x70:
				// magic, length, then the data padded to 8 bytes.
				if _, err := f.WriteAt([]byte(tt.format), 0x78); err != nil {
					t.Fatal(err)
				}
			}
			o, err := openImage(f, proto.ImageRef{Name: "top.qcow2", Format: "qcow2"}, false)
			if err != nil {
				t.Fatal(err)
			}
			if o.info.BackingFilename != tt.wantName {
				t.Errorf("backing file name %q, want %q", o.info.BackingFilename, tt.wantName)
			}
			if o.info.BackingFilenameFormat != tt.wantFormat {
				t.Errorf("backing format %q, want %q", o.info.BackingFilenameFormat, tt.wantFormat)
			}
		})
	}
}

// TestImageMagic: the magic commit consults before writing a file as raw
// (RAW_BASE_IS_IMAGE), and which of it detection accepts.
func TestImageMagic(t *testing.T) {
	mbr := make([]byte, 512)
	mbr[450], mbr[454], mbr[458] = 0x83, 1, 1 // one partition from sector 1, one sector
	mbr[510], mbr[511] = 0x55, 0xaa
	tests := []struct {
		first, magic, detected string
	}{
		{"QFI\xfb\x00\x00\x00\x03", "qcow2", "qcow2"},
		{"QFI\xfb\x00\x00\x00\x01", "qcow2", "qcow2"}, // qcow version 1 shares the magic
		{"KDMV\x01\x00\x00\x00", "vmdk", "vmdk"},
		{"# Disk DescriptorFile\nversion=1\n", "vmdk", "vmdk"},
		{"COWD\x01\x00\x00\x00", "vmdk3", ""},
		{string(mbr), "", "raw"},
		{"QFI", "", ""},
		{"", "", ""},
		{"\x00QFI\xfb", "", ""},
	}
	for _, tt := range tests {
		if got := imageMagic([]byte(tt.first)); got != tt.magic {
			t.Errorf("imageMagic(%q) = %q, want %q", tt.first[:min(8, len(tt.first))], got, tt.magic)
		}
		got, err := detect([]byte(tt.first), true, "x")
		if got != tt.detected || (err != nil) != (tt.detected == "") {
			t.Errorf("detect(%q) = %q, %v; want %q", tt.first[:min(8, len(tt.first))], got, err, tt.detected)
		}
	}
}
