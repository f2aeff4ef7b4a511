package vmdk

import (
	"bytes"
	"strconv"
	"strings"

	"instarfs/errcode"
)

// MaxDescriptorSize bounds the text ParseDescriptor accepts. An embedded
// descriptor qemu can read is shorter than 10 KiB.
const MaxDescriptorSize = 64 << 10

// LineKind classifies a descriptor line.
type LineKind uint8

const (
	LineBlank   LineKind = iota // empty or white space only
	LineComment                 // starts with '#' (after white space)
	LineKey                     // key=value in the header section (version, CID, ...)
	LineExtent                  // an extent description (RW 131072 SPARSE "x.vmdk")
	LineDDB                     // a disk database entry (ddb.key = "value")
	LineOther                   // anything else; kept, ignored
)

// Line is one descriptor line. Text excludes the line terminator, EOL holds it
// ("\n", "\r\n" or "" for a last line without one), so Text+EOL of all lines is
// the descriptor byte for byte.
type Line struct {
	Text string
	EOL  string
	Kind LineKind

	// Key and Value are set for LineKey and LineDDB: the text before the first
	// '=' and after it, white space trimmed and one pair of double quotes
	// removed from Value.
	Key, Value string
	// Extent is set for LineExtent.
	Extent *ExtentLine
}

// ExtentLine is a parsed extent description:
//
//	ACCESS SECTORS TYPE "FILENAME" [OFFSET]
type ExtentLine struct {
	Access    string // RW, RDONLY or NOACCESS
	Sectors   int64
	Type      string // SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, ...
	Filename  string // as written; never opened
	HasOffset bool
	Offset    int64
}

// Descriptor is a vmdk descriptor as a list of lines. It renders back to the
// exact text it was parsed from; the accessors read the values qemu reads.
type Descriptor struct {
	Lines []Line
}

// ParseDescriptor parses descriptor text (without the NUL padding of an embedded
// descriptor). It fails only on text that cannot be a descriptor: too long, a NUL
// byte, or an extent line it cannot read. Semantic checks (CID present, extents
// acceptable) are left to the accessors and Open.
func ParseDescriptor(text []byte) (*Descriptor, error) {
	if len(text) > MaxDescriptorSize {
		return nil, errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor of %d bytes is too large", len(text))
	}
	if bytes.IndexByte(text, 0) >= 0 {
		return nil, errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor contains a NUL byte")
	}
	d := &Descriptor{}
	rest := string(text)
	inDDB := false
	for len(rest) > 0 {
		var l Line
		if i := strings.IndexByte(rest, '\n'); i >= 0 {
			l.Text, rest = rest[:i], rest[i+1:]
			l.EOL = "\n"
			if strings.HasSuffix(l.Text, "\r") {
				l.Text = l.Text[:len(l.Text)-1]
				l.EOL = "\r\n"
			}
		} else {
			l.Text, rest = rest, ""
		}
		if err := l.classify(&inDDB); err != nil {
			return nil, err
		}
		d.Lines = append(d.Lines, l)
	}
	return d, nil
}

func (l *Line) classify(inDDB *bool) error {
	t := strings.TrimSpace(l.Text)
	switch {
	case t == "":
		l.Kind = LineBlank
		return nil
	case t[0] == '#':
		l.Kind = LineComment
		if t == "#DDB" || strings.HasPrefix(t, "# The Disk Data Base") {
			*inDDB = true
		}
		return nil
	}
	if word := strings.Fields(t)[0]; word == "RW" || word == "RDONLY" || word == "NOACCESS" {
		e, err := parseExtentLine(t)
		if err != nil {
			return err
		}
		l.Kind, l.Extent = LineExtent, e
		return nil
	}
	k, v, ok := strings.Cut(t, "=")
	if !ok {
		l.Kind = LineOther
		return nil
	}
	l.Key = strings.TrimSpace(k)
	l.Value = unquote(strings.TrimSpace(v))
	if strings.HasPrefix(l.Key, "ddb.") || *inDDB {
		l.Kind = LineDDB
	} else {
		l.Kind = LineKey
	}
	return nil
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// parseExtentLine reads ACCESS SECTORS TYPE "FILENAME" [OFFSET]; the file name
// may be missing for ZERO extents.
func parseExtentLine(t string) (*ExtentLine, error) {
	bad := func(why string) error {
		return errcode.New(errcode.VmdkBadDescriptor, "invalid vmdk extent line %q: %s", clip(t), why)
	}
	f := strings.Fields(t)
	if len(f) < 3 {
		return nil, bad("too few fields")
	}
	e := &ExtentLine{Access: f[0], Type: f[2]}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || n <= 0 {
		return nil, bad("bad sector count")
	}
	e.Sectors = n
	// The file name starts after the third field and is quoted.
	rest := t
	for range 3 {
		rest = strings.TrimLeft(rest, " \t")
		i := strings.IndexAny(rest, " \t")
		if i < 0 {
			rest = ""
			break
		}
		rest = rest[i:]
	}
	rest = strings.TrimLeft(rest, " \t")
	if rest == "" {
		if e.Type != "ZERO" {
			return nil, bad("no file name")
		}
		return e, nil
	}
	if rest[0] != '"' {
		return nil, bad("file name is not quoted")
	}
	end := strings.IndexByte(rest[1:], '"')
	if end < 0 {
		return nil, bad("file name is not terminated")
	}
	e.Filename = rest[1 : 1+end]
	rest = strings.TrimSpace(rest[2+end:])
	if rest != "" {
		off, err := strconv.ParseInt(rest, 10, 64)
		if err != nil || off < 0 {
			return nil, bad("bad offset")
		}
		e.HasOffset, e.Offset = true, off
	}
	return e, nil
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Render returns the descriptor text, identical to what was parsed.
func (d *Descriptor) Render() []byte {
	n := 0
	for _, l := range d.Lines {
		n += len(l.Text) + len(l.EOL)
	}
	b := make([]byte, 0, n)
	for _, l := range d.Lines {
		b = append(b, l.Text...)
		b = append(b, l.EOL...)
	}
	return b
}

// Clone returns a deep copy of d, for a writer to edit.
func (d *Descriptor) Clone() *Descriptor {
	c := &Descriptor{Lines: append([]Line(nil), d.Lines...)}
	for i, l := range c.Lines {
		if l.Extent != nil {
			e := *l.Extent
			c.Lines[i].Extent = &e
		}
	}
	return c
}

// String returns the descriptor text.
func (d *Descriptor) String() string { return string(d.Render()) }

// Get returns the value of the first header key=value line named key.
func (d *Descriptor) Get(key string) (string, bool) {
	if i := d.find(key); i >= 0 {
		return d.Lines[i].Value, true
	}
	return "", false
}

// find returns the index of the first LineKey named key, or -1.
func (d *Descriptor) find(key string) int {
	for i, l := range d.Lines {
		if l.Kind == LineKey && l.Key == key {
			return i
		}
	}
	return -1
}

// Extents returns the extent lines in order.
func (d *Descriptor) Extents() []ExtentLine {
	var es []ExtentLine
	for _, l := range d.Lines {
		if l.Kind == LineExtent {
			es = append(es, *l.Extent)
		}
	}
	return es
}

// DDB returns the disk database entries in order as key/value pairs.
func (d *Descriptor) DDB() [][2]string {
	var kv [][2]string
	for _, l := range d.Lines {
		if l.Kind == LineDDB {
			kv = append(kv, [2]string{l.Key, l.Value})
		}
	}
	return kv
}

// CreateType returns the createType value, without quotes.
func (d *Descriptor) CreateType() (string, bool) { return d.Get("createType") }

// CID returns the content ID. It is read the way qemu reads it (the hex number
// after the first "CID=" in the text) and must also be the value of a CID line
// of one to eight hex digits, so that both readings agree.
func (d *Descriptor) CID() (uint32, error) { return d.cid("CID") }

// ParentCID returns the parent content ID, read like CID; 0xffffffff means no
// parent.
func (d *Descriptor) ParentCID() (uint32, error) { return d.cid("parentCID") }

func (d *Descriptor) cid(key string) (uint32, error) {
	text := d.String()
	i := d.find(key)
	if i < 0 {
		return 0, errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor has no %s line", key)
	}
	if off := d.offsetOf(i); strings.Index(text, key) != off || !strings.HasPrefix(d.Lines[i].Text, key+"=") {
		return 0, errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor is ambiguous: %q appears before its %s line", key, key)
	}
	v := d.Lines[i].Value
	if len(v) == 0 || len(v) > 8 || strings.Trim(v, "0123456789abcdefABCDEF") != "" ||
		d.Lines[i].Text != key+"="+v {
		return 0, errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor has an invalid %s %q", key, clip(v))
	}
	n, _ := strconv.ParseUint(v, 16, 32) // cannot fail: 1 to 8 hex digits
	return uint32(n), nil
}

// offsetOf returns the byte offset of line i in the rendered text.
func (d *Descriptor) offsetOf(i int) int {
	off := 0
	for _, l := range d.Lines[:i] {
		off += len(l.Text) + len(l.EOL)
	}
	return off
}

// ParentFileNameHint returns the parent file name and whether the descriptor
// names one. qemu takes the text between `parentFileNameHint="` and the next
// quote; the line must say exactly that, and the name must fit qemu's 1023 bytes.
func (d *Descriptor) ParentFileNameHint() (string, bool, error) {
	const key = "parentFileNameHint"
	text := d.String()
	at := strings.Index(text, key)
	i := d.find(key)
	if at < 0 && i < 0 {
		return "", false, nil
	}
	if i < 0 || at != d.offsetOf(i) {
		return "", false, errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor is ambiguous: %q appears outside its line", key)
	}
	t := d.Lines[i].Text
	name, ok := strings.CutPrefix(t, key+`="`)
	if !ok || !strings.HasSuffix(name, `"`) || strings.Count(name, `"`) != 1 {
		return "", false, errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor has an invalid parentFileNameHint line %q", clip(t))
	}
	name = name[:len(name)-1]
	if len(name) > 1023 {
		return "", false, errcode.New(errcode.VmdkBadDescriptor, "vmdk parentFileNameHint of %d bytes is too long", len(name))
	}
	return name, true, nil
}
