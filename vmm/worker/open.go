package worker

import (
	"bytes"
	"io"
	"os"
	"strings"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/qcow2"
	"instarfs/vmm/worker/internal/scratch"
	"instarfs/vmm/worker/internal/vmdk"
)

// opened is one image descriptor opened by its format.
type opened struct {
	ref  proto.ImageRef
	file *os.File // nil for a member read through a guest's port
	// r reads the image: file, or the port.
	r      io.ReaderAt
	size   int64 // of the file
	format string
	img    layer.Image
	info   proto.Info
	q      *qcow2.Image // set for qcow2
	v      *vmdk.Image  // set for vmdk
	// magic is the image format the file's first bytes announce, whatever
	// format it is opened as (imageMagic).
	magic string
	// described: the host's broker was told info.
	described bool
}

// sniffBytes is how much of a file format detection looks at.
const sniffBytes = 64 << 10

var (
	qcow2Magic = []byte("QFI\xfb")
	vmdkMagic  = []byte("KDMV")
	vmdk3Magic = []byte("COWD")
	vmdkText   = []byte("# Disk DescriptorFile")
)

// imageMagic names the image format whose magic first starts with: "qcow2"
// (qcow version 1 shares it), "vmdk" (sparse extent or descriptor), "vmdk3"
// (the old COWD sparse format, which instarfs does not read), or "".
func imageMagic(first []byte) string {
	switch {
	case bytes.HasPrefix(first, qcow2Magic):
		return "qcow2"
	case bytes.HasPrefix(first, vmdkMagic), bytes.HasPrefix(first, vmdkText):
		return "vmdk"
	case bytes.HasPrefix(first, vmdk3Magic):
		return "vmdk3"
	}
	return ""
}

// detect names the format of a file from its first bytes: qcow2 and vmdk by
// their magic, raw only when detectRaw is set and the file carries a partition
// table.
func detect(first []byte, detectRaw bool, name string) (string, error) {
	switch m := imageMagic(first); {
	case m == "qcow2" || m == "vmdk":
		return m, nil
	case detectRaw && rawDetect(first):
		return "raw", nil
	}
	return "", errcode.New(errcode.FormatNotDetected, "could not determine the format of '%s': it is not qcow2 or vmdk and has no partition table; name its format with -f", name)
}

// openImage opens f as ref describes it. An empty ref.Format is detected.
func openImage(f *os.File, ref proto.ImageRef, detectRaw bool) (*opened, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, errcode.New(errcode.ReadFailed, "stat %s: %v", ref.Name, err)
	}
	o := &opened{ref: ref, file: f, r: f, size: st.Size()}
	if st.Mode()&os.ModeDevice != 0 && ref.Size > 0 {
		// A microvm guest sees the image as a block device, whose length is
		// rounded up to sectors; the host sends the file's own length.
		o.size = ref.Size
		if ref.Writable {
			devices.track(f, ref.Size)
		}
	}
	return o.open(detectRaw)
}

// openRemote opens a member of the chain the host did not attach to a
// microvm guest: r reads it through the port.
func openRemote(r remote, ref proto.ImageRef) (*opened, error) {
	o := &opened{ref: ref, r: r, size: r.size}
	return o.open(false)
}

// open opens o by its format.
func (o *opened) open(detectRaw bool) (*opened, error) {
	ref := o.ref
	var err error
	first := scratch.Get(int(min(sniffBytes, o.size)))
	defer scratch.Put(first)
	if _, err := o.r.ReadAt(first, 0); err != nil {
		return nil, errcode.New(errcode.ReadFailed, "reading %s: %v", ref.Name, err)
	}
	o.magic = imageMagic(first)
	o.format = ref.Format
	if o.format == "" {
		if o.format, err = detect(first, detectRaw, ref.Name); err != nil {
			return nil, err
		}
	}
	switch o.format {
	case "qcow2":
		if o.magic != "qcow2" {
			return nil, errcode.New(errcode.FormatMismatch, "'%s' is not a qcow2 image", ref.Name)
		}
		err = o.openQcow2()
	case "vmdk":
		if o.magic != "vmdk" {
			return nil, errcode.New(errcode.FormatMismatch, "'%s' is not a vmdk image", ref.Name)
		}
		err = o.openVmdk()
	case "raw":
		err = o.openRaw()
	default:
		err = errcode.New(errcode.UnknownFormat, "unknown format %q for '%s'", o.format, ref.Name)
	}
	if err != nil {
		return nil, err
	}
	return o, nil
}

func (o *opened) openQcow2() error {
	q, err := qcow2.Open(o.r, o.size)
	if err != nil {
		return err
	}
	o.q, o.img = q, q
	h := q.Header()
	spec := &proto.Qcow2Specific{Compat: "0.10", CompressionType: "zlib", RefcountBits: h.RefcountBits()}
	if h.CompressionType == 1 {
		spec.CompressionType = "zstd"
	}
	if h.Version >= 3 {
		lazy, corrupt, xl2 := h.LazyRefcounts(), h.Corrupt(), h.ExtendedL2()
		spec.Compat, spec.LazyRefcounts, spec.Corrupt, spec.ExtendedL2 = "1.1", &lazy, &corrupt, &xl2
	}
	o.info = proto.Info{
		Format:          "qcow2",
		VirtualSize:     q.VirtualSize(),
		ClusterSize:     q.ClusterSize(),
		BackingFilename: cString(h.BackingFile),
		DirtyFlag:       h.Dirty(),
		FormatSpecific:  &proto.FormatSpecific{Type: "qcow2", Data: spec},
	}
	if f, ok := h.BackingFormat(); ok && o.info.BackingFilename != "" {
		o.info.BackingFilenameFormat = cString(f)
	}
	snaps, err := q.Snapshots()
	if err != nil {
		return err
	}
	for _, s := range snaps {
		o.info.Snapshots = append(o.info.Snapshots, proto.Snapshot{
			ID: s.ID, Name: s.Name, VMStateSize: int64(s.VMStateSize),
			DateSec: int64(s.DateSec), DateNsec: int64(s.DateNsec),
			ClockSec: int64(s.VMClockNsec / 1e9), ClockNsec: int64(s.VMClockNsec % 1e9),
		})
		if s.HasIcount && s.Icount != ^uint64(0) {
			ic := int64(s.Icount)
			o.info.Snapshots[len(o.info.Snapshots)-1].ICount = &ic
		}
	}
	return nil
}

// cString is s up to its first NUL byte: qemu reads the backing file name and
// the backing format as C strings, so a NUL ends them.
func cString(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i]
	}
	return s
}

// openImages opens every image of the request, top first, with the formats the
// host named.
func (s *session) openImages() ([]*opened, error) {
	out := make([]*opened, len(s.req.Images))
	for i, ref := range s.req.Images {
		o, err := openImage(s.files[i], ref, false)
		if err != nil {
			return nil, err
		}
		out[i] = o
	}
	return out, nil
}

// member is the image as the map walk sees it. qemu consults the image file's
// holes only for raw images and for qcow2 images with preallocated metadata.
func (o *opened) member() member {
	m := member{img: o.img, raw: o.format == "raw"}
	if o.file != nil && (m.raw || o.q != nil && metadataPreallocated(o.q, o.file)) {
		m.holes = fileHoles{o.file}
	}
	return m
}

// stackOf stacks the images of c, top first.
func stackOf(c []*opened) layer.Stack {
	s := make(layer.Stack, len(c))
	for i, o := range c {
		s[i] = o.img
	}
	return s
}
