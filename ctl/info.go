// Package ctl runs the operations users ask for — from the command line or
// through the mount's control files — and renders their results: the JSON and
// human forms of info, map and check, and the result envelope of rebase and
// commit.
package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
)

// ImageInfo is one image as `qemu-img info --output=json` reports it. The field
// order follows qemu-img's output.
type ImageInfo struct {
	Snapshots             []proto.Snapshot      `json:"snapshots,omitempty"`
	BackingFilenameFormat string                `json:"backing-filename-format,omitempty"`
	VirtualSize           int64                 `json:"virtual-size"`
	Filename              string                `json:"filename"`
	ClusterSize           int64                 `json:"cluster-size,omitempty"`
	Format                string                `json:"format"`
	ActualSize            int64                 `json:"actual-size"`
	FormatSpecific        *proto.FormatSpecific `json:"format-specific,omitempty"`
	FullBackingFilename   string                `json:"full-backing-filename,omitempty"`
	BackingFilename       string                `json:"backing-filename,omitempty"`
	DirtyFlag             bool                  `json:"dirty-flag"`
}

// Info describes the images of c, top first, or the top alone.
func Info(c *chainmodel.Chain, backingChain bool) []ImageInfo {
	imgs := c.Images
	if !backingChain {
		imgs = imgs[:1]
	}
	out := make([]ImageInfo, len(imgs))
	for i, im := range imgs {
		out[i] = imageInfo(im)
	}
	return out
}

func imageInfo(im *chainmodel.Image) ImageInfo {
	in := im.Info
	ii := ImageInfo{
		Snapshots:             in.Snapshots,
		BackingFilenameFormat: in.BackingFilenameFormat,
		VirtualSize:           in.VirtualSize,
		Filename:              im.Name,
		ClusterSize:           in.ClusterSize,
		Format:                in.Format,
		ActualSize:            im.ActualSize(),
		FormatSpecific:        in.FormatSpecific,
		BackingFilename:       in.BackingFilename,
		DirtyFlag:             in.DirtyFlag,
	}
	if in.BackingFilename != "" {
		ii.FullBackingFilename = chainmodel.FullBackingName(im.Name, in.BackingFilename)
	}
	if fs := in.FormatSpecific; fs != nil && fs.Type == "vmdk" {
		// The worker knows the image only by descriptor; qemu names the extent
		// by the path the image was opened with.
		if d, ok := fs.Data.(*proto.VmdkSpecific); ok {
			cp := *d
			cp.Extents = append([]proto.VmdkExtent(nil), d.Extents...)
			for j := range cp.Extents {
				cp.Extents[j].Filename = im.Name
			}
			ii.FormatSpecific = &proto.FormatSpecific{Type: fs.Type, Data: &cp}
		}
	}
	return ii
}

// InfoJSON renders infos as qemu-img does: an object, or an array of objects for
// --backing-chain.
func InfoJSON(infos []ImageInfo, backingChain bool) []byte {
	var v any = infos
	if !backingChain {
		v = infos[0]
	}
	return qemuJSON(v)
}

// Unopened stands in a backing chain for the image that could not be opened
// (missing, refused), below the images that could.
type Unopened struct {
	Filename string         `json:"filename"`
	Error    *errcode.Error `json:"error"`
}

// PartialChainJSON renders the images of a chain that could be opened, top
// first, and then the one that could not: --backing-chain's array, where
// qemu-img fails instead.
func PartialChainJSON(infos []ImageInfo, last Unopened) []byte {
	v := make([]any, 0, len(infos)+1)
	for _, ii := range infos {
		v = append(v, ii)
	}
	return qemuJSON(append(v, last))
}

// qemuJSON renders v with qemu's four-space indentation and a final newline.
func qemuJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "    ")
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("encoding %T: %v", v, err)) // only fixed, encodable types reach here
	}
	return buf.Bytes()
}

// InfoHuman renders infos in qemu-img info's human form.
func InfoHuman(infos []ImageInfo) []byte {
	var b strings.Builder
	for i, ii := range infos {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "image: %s\n", ii.Filename)
		fmt.Fprintf(&b, "file format: %s\n", ii.Format)
		fmt.Fprintf(&b, "virtual size: %s (%d bytes)\n", SizeString(ii.VirtualSize), ii.VirtualSize)
		fmt.Fprintf(&b, "disk size: %s\n", SizeString(ii.ActualSize))
		if ii.ClusterSize != 0 {
			fmt.Fprintf(&b, "cluster_size: %d\n", ii.ClusterSize)
		}
		if ii.BackingFilename != "" {
			fmt.Fprintf(&b, "backing file: %s", ii.BackingFilename)
			if ii.FullBackingFilename != ii.BackingFilename {
				fmt.Fprintf(&b, " (actual path: %s)", ii.FullBackingFilename)
			}
			b.WriteString("\n")
			if ii.BackingFilenameFormat != "" {
				fmt.Fprintf(&b, "backing file format: %s\n", ii.BackingFilenameFormat)
			}
		}
		if ii.DirtyFlag {
			b.WriteString("cleanly shut down: no\n")
		}
		if len(ii.Snapshots) > 0 {
			writeSnapshots(&b, ii.Snapshots)
		}
		if fs := ii.FormatSpecific; fs != nil {
			b.WriteString("Format specific information:\n")
			writeSpecific(&b, fs)
		}
	}
	return []byte(b.String())
}

func writeSnapshots(b *strings.Builder, snaps []proto.Snapshot) {
	b.WriteString("Snapshot list:\n")
	fmt.Fprintf(b, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
	for _, s := range snaps {
		date := unixDate(s.DateSec)
		ns := s.ClockSec*1e9 + s.ClockNsec
		clock := fmt.Sprintf("%02d:%02d:%02d.%03d", ns/3600e9, ns/60e9%60, ns/1e9%60, ns/1e6%1000)
		icount := ""
		if s.ICount != nil {
			icount = fmt.Sprint(*s.ICount)
		}
		fmt.Fprintf(b, "%-9s %-16s %8s%20s%13s%11s\n", s.ID, s.Name, SizeString(s.VMStateSize), date, clock, icount)
	}
}

func writeSpecific(b *strings.Builder, fs *proto.FormatSpecific) {
	switch d := fs.Data.(type) {
	case *proto.Qcow2Specific:
		fmt.Fprintf(b, "    compat: %s\n", d.Compat)
		fmt.Fprintf(b, "    compression type: %s\n", d.CompressionType)
		if d.LazyRefcounts != nil {
			fmt.Fprintf(b, "    lazy refcounts: %t\n", *d.LazyRefcounts)
		}
		fmt.Fprintf(b, "    refcount bits: %d\n", d.RefcountBits)
		if d.Corrupt != nil {
			fmt.Fprintf(b, "    corrupt: %t\n", *d.Corrupt)
		}
		if d.ExtendedL2 != nil {
			fmt.Fprintf(b, "    extended l2: %t\n", *d.ExtendedL2)
		}
	case *proto.VmdkSpecific:
		fmt.Fprintf(b, "    cid: %d\n", d.CID)
		fmt.Fprintf(b, "    parent cid: %d\n", d.ParentCID)
		fmt.Fprintf(b, "    create type: %s\n", d.CreateType)
		b.WriteString("    extents:\n")
		for i, e := range d.Extents {
			fmt.Fprintf(b, "        [%d]:\n", i)
			if e.Compressed {
				fmt.Fprintf(b, "            compressed: true\n")
			}
			fmt.Fprintf(b, "            virtual size: %d\n", e.VirtualSize)
			fmt.Fprintf(b, "            filename: %s\n", e.Filename)
			fmt.Fprintf(b, "            cluster size: %d\n", e.ClusterSize)
			fmt.Fprintf(b, "            format: %s\n", e.Format)
		}
	}
}

// SizeString renders a byte count as qemu's size_to_str does ("64 MiB",
// "196 KiB", "1.5 GiB").
func SizeString(v int64) string {
	suffixes := []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	_, e := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := (e - 1) / 10
	if i < 0 {
		i = 0
	}
	if i >= len(suffixes) {
		i = len(suffixes) - 1
	}
	return fmt.Sprintf("%.3g %sB", float64(v)/float64(uint64(1)<<(10*i)), suffixes[i])
}

// InfoFor opens path's chain (without locks with forceShare, as -U) and
// describes it; a convenience for callers that hold no chain.
func InfoFor(ctx context.Context, o *Opener, path, format string, backingChain, forceShare bool) ([]ImageInfo, error) {
	c, err := o.OpenChain(ctx, path, OpenOptions{Format: format, NoBacking: !backingChain, ForceShare: forceShare})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return Info(c, backingChain), nil
}
