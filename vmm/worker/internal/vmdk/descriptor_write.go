package vmdk

import (
	"fmt"
	"slices"
	"strings"

	"instarfs/errcode"
)

// NoParentCID is the parentCID of an image without a parent.
const NoParentCID = 0xffffffff

// SetCID sets the CID line, printed as qemu prints it: lowercase hex, not
// zero-padded.
func (d *Descriptor) SetCID(cid uint32) error {
	i := d.find("CID")
	if i < 0 {
		return errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor has no CID line")
	}
	d.setKey(i, "CID", fmt.Sprintf("%x", cid))
	return nil
}

// SetParentCID sets the parentCID line, inserting it after the CID line when
// the descriptor has none.
func (d *Descriptor) SetParentCID(cid uint32) error {
	v := fmt.Sprintf("%x", cid)
	if i := d.find("parentCID"); i >= 0 {
		d.setKey(i, "parentCID", v)
		return nil
	}
	i := d.find("CID")
	if i < 0 {
		return errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor has no CID line")
	}
	d.insert(i+1, "parentCID", v)
	return nil
}

// SetParentFileNameHint names the parent (has) or removes it. qemu's template is
// `createType="%s"\n%s\n# Extent description` where %s is the hint line or
// nothing, so an image without a parent has a blank line where the hint would
// be; this setter keeps that shape: removing the hint leaves a blank line, and
// adding one replaces the blank line after createType when there is one.
func (d *Descriptor) SetParentFileNameHint(name string, has bool) error {
	if has {
		if len(name) > 1023 || strings.ContainsAny(name, "\"\r\n\x00") {
			return errcode.New(errcode.BadArguments, "parent file name %q cannot be written into a vmdk descriptor", clip(name))
		}
	}
	text := `parentFileNameHint="` + name + `"`
	i := d.find("parentFileNameHint")
	switch {
	case i >= 0 && has:
		d.Lines[i] = Line{Text: text, EOL: d.Lines[i].EOL, Kind: LineKey, Key: "parentFileNameHint", Value: name}
	case i >= 0:
		d.Lines[i] = Line{Text: "", EOL: d.Lines[i].EOL, Kind: LineBlank}
	case has:
		at := d.find("createType")
		if at < 0 {
			at = d.find("parentCID")
		}
		if at < 0 {
			return errcode.New(errcode.VmdkBadDescriptor, "vmdk descriptor has no createType or parentCID line to put the parent name after")
		}
		eol := d.eol(at)
		if at+1 < len(d.Lines) && d.Lines[at+1].Kind == LineBlank {
			d.Lines[at+1] = Line{Text: text, EOL: d.Lines[at+1].EOL, Kind: LineKey, Key: "parentFileNameHint", Value: name}
		} else {
			d.Lines = slices.Insert(d.Lines, at+1, Line{Text: text, EOL: eol, Kind: LineKey, Key: "parentFileNameHint", Value: name})
		}
	}
	return nil
}

func (d *Descriptor) setKey(i int, key, value string) {
	eol := d.Lines[i].EOL
	if eol == "" && i < len(d.Lines)-1 {
		eol = "\n"
	}
	d.Lines[i] = Line{Text: key + "=" + value, EOL: eol, Kind: LineKey, Key: key, Value: value}
}

func (d *Descriptor) insert(at int, key, value string) {
	d.Lines = slices.Insert(d.Lines, at, Line{Text: key + "=" + value, EOL: d.eol(at - 1), Kind: LineKey, Key: key, Value: value})
}

// eol is the line terminator to use next to line i: its own, or "\n".
func (d *Descriptor) eol(i int) string {
	if i >= 0 && i < len(d.Lines) && d.Lines[i].EOL != "" {
		return d.Lines[i].EOL
	}
	if i >= 0 && i < len(d.Lines) {
		d.Lines[i].EOL = "\n" // the line is no longer the last one
	}
	return "\n"
}

// EncodeEmbedded renders d for an embedded descriptor area of area bytes: the
// text, NUL padded to the whole area. The text must leave room for the NUL that
// ends it and lie within the part qemu reads; the result is checked by parsing
// it again.
func (d *Descriptor) EncodeEmbedded(area int64) ([]byte, error) {
	text := d.Render()
	limit := min(area, qemuDescWindow)
	if int64(len(text)) >= limit {
		return nil, errcode.New(errcode.VmdkDescriptorTooLarge, "vmdk descriptor of %d bytes does not fit its area of %d bytes", len(text), limit)
	}
	back, err := ParseDescriptor(text)
	if err != nil {
		return nil, err
	}
	if _, err := back.CID(); err != nil {
		return nil, err
	}
	if _, err := back.ParentCID(); err != nil {
		return nil, err
	}
	if _, _, err := back.ParentFileNameHint(); err != nil {
		return nil, err
	}
	buf := make([]byte, area)
	copy(buf, text)
	return buf, nil
}
