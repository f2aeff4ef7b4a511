package vmdk

import (
	"bytes"
	"reflect"
	"testing"

	"instarfs/errcode"
)

const qemuDescriptor = "# Disk DescriptorFile\n" +
	"version=1\n" +
	"CID=aeaf814f\n" +
	"parentCID=a8c04d02\n" +
	"createType=\"monolithicSparse\"\n" +
	"parentFileNameHint=\"base.vmdk\"\n" +
	"# Extent description\n" +
	"RW 131072 SPARSE \"ov.vmdk\"\n" +
	"\n" +
	"# The Disk Data Base\n" +
	"#DDB\n" +
	"\n" +
	"ddb.virtualHWVersion = \"4\"\n" +
	"ddb.geometry.cylinders = \"130\"\n" +
	"ddb.geometry.heads = \"16\"\n" +
	"ddb.geometry.sectors = \"63\"\n" +
	"ddb.adapterType = \"ide\"\n" +
	"ddb.toolsVersion = \"2147483647\"\n"

func TestParseDescriptor(t *testing.T) {
	d, err := ParseDescriptor([]byte(qemuDescriptor))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(d.Render()); got != qemuDescriptor {
		t.Errorf("Render:\n%s", got)
	}
	cid, err1 := d.CID()
	pcid, err2 := d.ParentCID()
	hint, ok, err3 := d.ParentFileNameHint()
	ct, _ := d.CreateType()
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatal(err1, err2, err3)
	}
	if cid != 0xaeaf814f || pcid != 0xa8c04d02 || hint != "base.vmdk" || !ok || ct != "monolithicSparse" {
		t.Errorf("cid %x parent %x hint %q %v type %q", cid, pcid, hint, ok, ct)
	}
	if v, _ := d.Get("version"); v != "1" {
		t.Errorf("version %q", v)
	}
	want := []ExtentLine{{Access: "RW", Sectors: 131072, Type: "SPARSE", Filename: "ov.vmdk"}}
	if got := d.Extents(); !reflect.DeepEqual(got, want) {
		t.Errorf("extents %+v", got)
	}
	ddb := d.DDB()
	if len(ddb) != 6 || ddb[0] != [2]string{"ddb.virtualHWVersion", "4"} || ddb[5] != [2]string{"ddb.toolsVersion", "2147483647"} {
		t.Errorf("ddb %q", ddb)
	}
}

func TestDescriptorLines(t *testing.T) {
	for _, tc := range []struct {
		name string
		text string
		want []Line
	}{
		{"crlf and no final newline", "version=1\r\n# c\n  \nRW 10 FLAT \"a b.img\" 7", []Line{
			{Text: "version=1", EOL: "\r\n", Kind: LineKey, Key: "version", Value: "1"},
			{Text: "# c", EOL: "\n", Kind: LineComment},
			{Text: "  ", EOL: "\n", Kind: LineBlank},
			{Text: "RW 10 FLAT \"a b.img\" 7", Kind: LineExtent,
				Extent: &ExtentLine{Access: "RW", Sectors: 10, Type: "FLAT", Filename: "a b.img", HasOffset: true, Offset: 7}},
		}},
		{"zero extent and other", "NOACCESS 5 ZERO\nfoo\n#DDB\nx = \"y\"\n", []Line{
			{Text: "NOACCESS 5 ZERO", EOL: "\n", Kind: LineExtent, Extent: &ExtentLine{Access: "NOACCESS", Sectors: 5, Type: "ZERO"}},
			{Text: "foo", EOL: "\n", Kind: LineOther},
			{Text: "#DDB", EOL: "\n", Kind: LineComment},
			{Text: "x = \"y\"", EOL: "\n", Kind: LineDDB, Key: "x", Value: "y"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDescriptor([]byte(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d.Lines, tc.want) {
				t.Errorf("lines\n%+v\nwant\n%+v", d.Lines, tc.want)
			}
			if got := d.String(); got != tc.text {
				t.Errorf("Render %q", got)
			}
		})
	}
}

func TestDescriptorErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		text string
	}{
		{"nul", "version=1\x00"},
		{"extent without name", "RW 10 SPARSE\n"},
		{"extent unquoted", "RW 10 SPARSE a.vmdk\n"},
		{"extent unterminated", "RW 10 SPARSE \"a.vmdk\n"},
		{"extent bad offset", "RW 10 FLAT \"a\" -1\n"},
		{"extent zero sectors", "RW 0 SPARSE \"a\"\n"},
		{"extent short", "RDONLY 10\n"},
		{"too long", string(bytes.Repeat([]byte("#"), MaxDescriptorSize+1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDescriptor([]byte(tc.text))
			if errcode.Of(err) != errcode.VmdkBadDescriptor {
				t.Errorf("err %v", err)
			}
		})
	}
}

func TestDescriptorCIDs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		text      string
		cid, pcid uint32
		ok        bool
	}{
		{"qemu", "CID=fffffffe\nparentCID=ffffffff\n", 0xfffffffe, 0xffffffff, true},
		{"short and upper case", "CID=A\nparentCID=0\n", 0xa, 0, true},
		{"spaces", "CID = 1\nparentCID=0\n", 0, 0, false},
		{"prefix", "CID=0x1\nparentCID=0\n", 0, 0, false},
		{"trailing junk", "CID=12zz\nparentCID=0\n", 0, 0, false},
		{"indented", " CID=1\nparentCID=0\n", 0, 0, false},
		{"in a ddb value first", "ddb.x = \"CID\"\nCID=1\nparentCID=0\n", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDescriptor([]byte(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			cid, err1 := d.CID()
			pcid, err2 := d.ParentCID()
			if ok := err1 == nil && err2 == nil; ok != tc.ok || (ok && (cid != tc.cid || pcid != tc.pcid)) {
				t.Errorf("cid %x %v parent %x %v", cid, err1, pcid, err2)
			}
		})
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Version: 3, Flags: 0x30003, Capacity: 1 << 40, GrainSize: 128, DescriptorOffset: 1,
		DescriptorSize: 20, NumGTEsPerGT: 512, RGDOffset: 21, GDOffset: GDAtEnd, OverHead: 128,
		UncleanShutdown: 1, CheckBytes: [4]byte{'\n', ' ', '\r', '\n'}, CompressAlgorithm: 1}
	b, _ := h.AppendBinary(nil)
	if len(b) != HeaderSize {
		t.Fatalf("%d bytes", len(b))
	}
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Errorf("%+v, %v", got, err)
	}
	if _, err := ParseHeader(b[:HeaderSize-1]); errcode.Of(err) != errcode.VmdkBadHeader {
		t.Errorf("short header: %v", err)
	}
}

func TestDescriptorClone(t *testing.T) {
	d, err := ParseDescriptor([]byte(qemuDescriptor))
	if err != nil {
		t.Fatal(err)
	}
	c := d.Clone()
	c.Lines[0].Text = "changed"
	for _, l := range c.Lines {
		if l.Extent != nil {
			l.Extent.Filename = "changed"
		}
	}
	if d.String() != qemuDescriptor || d.Extents()[0].Filename != "ov.vmdk" {
		t.Error("Clone shares state")
	}
}
