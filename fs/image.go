package fs

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/proto"
)

// imageNode is the directory shown for an image file. It stays the file it
// was looked up as: when its name comes to mean another file, its files
// serve nothing and its control files change nothing (IMAGE_CHANGED, EBUSY).
type imageNode struct {
	node
	id chainmodel.FileID
}

var (
	_ gofs.NodeLookuper  = (*imageNode)(nil)
	_ gofs.NodeReaddirer = (*imageNode)(nil)
	_ gofs.NodeGetattrer = (*imageNode)(nil)
)

// imageFile describes one file of an image directory.
type imageFile struct {
	name string
	kind int
}

var imageFiles = []imageFile{
	{"info.json", kindInfo},
	{"chain.json", kindChain},
	{"map.json", kindMap},
	{"map.svg", kindMapSVG},
	{"check.json", kindCheck},
	{"backing", kindBacking},
	{"status", kindStatus},
	{"result.json", kindResult},
	{"rebase", kindRebase},
	{"commit", kindCommit},
	{"repair", kindRepair},
	{"disk", kindDisk},
}

// stat returns the attributes of the image file, checked to be the node's.
func (im *imageNode) stat() (unix.Stat_t, syscall.Errno) {
	return im.fs.stat(im.rel(), false, im.id)
}

func (im *imageNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	st, errno := im.stat()
	if errno != 0 {
		return errno
	}
	setAttr(&out.Attr, kindImage, &st)
	return 0
}

// shown reports whether f appears in this image directory now.
func (im *imageNode) shown(ctx context.Context, f imageFile) bool {
	switch f.kind {
	case kindRebase, kindCommit, kindRepair:
		return !im.fs.cfg.ReadOnly
	case kindBacking:
		_, ok := im.fs.backingLink(ctx, im.rel(), im.id)
		return ok
	}
	return true
}

// backingLink is the target of the backing symlink of the image at rel (the
// file id): the backing image's directory, relative to the image's, when the
// backing file lies in IMAGEDIR.
func (f *FS) backingLink(ctx context.Context, rel string, id chainmodel.FileID) (string, bool) {
	c, ok := f.imageClass(ctx, rel, id)
	if !ok || c.err != nil {
		return "", false
	}
	name, err := f.backingName(ctx, rel, c, id)
	if err != nil || name == "" {
		return "", false
	}
	loc, err := f.cfg.Opener.Policy.Locate(filepath.Dir(f.hostPath(rel)), name)
	if err != nil || loc.Root != f.root {
		return "", false
	}
	target, err := filepath.Rel(rel, loc.Rel)
	if err != nil {
		return "", false
	}
	return strings.TrimSuffix(target, "/"), true
}

func (im *imageNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	for _, f := range imageFiles {
		if f.name != name {
			continue
		}
		if !im.shown(ctx, f) {
			return nil, syscall.ENOENT
		}
		st, errno := im.stat()
		if errno != 0 {
			return nil, errno
		}
		setAttr(&out.Attr, f.kind, &st)
		if im.fs.jobTimes(&out.Attr, f.kind, &st) {
			out.SetAttrTimeout(uncached)
		}
		if f.kind == kindDisk {
			im.fs.diskSize(ctx, im.rel(), im.id, &out.Attr, &st)
		} else {
			out.Size = im.fs.size(ctx, f.kind, im.rel(), &st)
		}
		return im.NewInode(ctx, im.newChild(f), gofs.StableAttr{Mode: fileType(f.kind), Ino: inodeNumber(f.kind, st.Dev, st.Ino)}), 0
	}
	return nil, syscall.ENOENT
}

func (im *imageNode) newChild(f imageFile) gofs.InodeEmbedder {
	switch f.kind {
	case kindBacking:
		return &backingNode{node: node{fs: im.fs}}
	case kindRebase, kindCommit, kindRepair:
		return &controlNode{node: node{fs: im.fs}, op: f.name, kind: f.kind}
	case kindDisk:
		return &diskNode{node: node{fs: im.fs}}
	}
	return &genNode{node: node{fs: im.fs}, kind: f.kind}
}

func (im *imageNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	st, errno := im.stat()
	if errno != 0 {
		return nil, errno
	}
	list := dots(&im.Inode)
	for _, f := range imageFiles {
		if im.shown(ctx, f) {
			list = append(list, fuse.DirEntry{Name: f.name, Mode: fileType(f.kind), Ino: inodeNumber(f.kind, st.Dev, st.Ino)})
		}
	}
	return gofs.NewListDirStream(list), 0
}

// imageRel is the path, relative to ImageDir, of the image whose directory
// holds n.
func (n *node) imageRel() string {
	_, parent := n.Parent()
	if parent == nil {
		return "."
	}
	p := parent.Path(nil)
	if p == "" {
		return "."
	}
	return p
}

// image is the image directory node n lies in, nil when n is detached.
func (n *node) image() *imageNode {
	_, parent := n.Parent()
	if parent == nil {
		return nil
	}
	im, _ := parent.Operations().(*imageNode)
	return im
}

// imageID is the identity of the image whose directory holds n, as the mount
// showed it, and the image's attributes now.
func (n *node) imageID() (chainmodel.FileID, unix.Stat_t, syscall.Errno) {
	im := n.image()
	if im == nil {
		return chainmodel.FileID{}, unix.Stat_t{}, syscall.ENOENT
	}
	st, errno := im.stat()
	return im.id, st, errno
}

// imageClass classifies the image at rel, which must be the file id, again
// (a cache hit while the file is unchanged).
func (f *FS) imageClass(ctx context.Context, rel string, id chainmodel.FileID) (class, bool) {
	st, errno := f.stat(rel, false, id)
	if errno != 0 {
		return class{}, false
	}
	c := f.classify(ctx, rel, &st)
	return c, c.image
}

// backingName is the backing file name the image at rel (the file id)
// records, from its probe (cached by identity).
func (f *FS) backingName(ctx context.Context, rel string, c class, id chainmodel.FileID) (string, error) {
	info, err := f.imageInfo(ctx, rel, c, id)
	return info.BackingFilename, err
}

// imageInfo is what the probe of the image at rel (the file id) says
// (cached by identity).
func (f *FS) imageInfo(ctx context.Context, rel string, c class, id chainmodel.FileID) (proto.Info, error) {
	file, _, err := f.cfg.Opener.Policy.Open(f.loc(rel), chainmodel.How{Access: chainmodel.Read, Want: &id})
	if err != nil {
		return proto.Info{}, err
	}
	defer file.Close()
	info, _, err := f.cfg.Opener.Probe(ctx, file, rel, c.format, c.format == "")
	return info, err
}

// backingNode is the backing symlink.
type backingNode struct {
	node
}

var (
	_ gofs.NodeReadlinker = (*backingNode)(nil)
	_ gofs.NodeGetattrer  = (*backingNode)(nil)
)

// Getattr gives the symlink's mode, the image file's owner and times, and the
// length of the target as its size.
func (b *backingNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx, stop := callerContext(ctx)
	defer stop()
	_, st, errno := b.imageID()
	if errno != 0 {
		return errno
	}
	setAttr(&out.Attr, kindBacking, &st)
	out.Size = b.fs.size(ctx, kindBacking, b.imageRel(), &st)
	return 0
}

func (b *backingNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	id, _, errno := b.imageID()
	if errno != 0 {
		return nil, errno
	}
	target, ok := b.fs.backingLink(ctx, b.imageRel(), id)
	if !ok {
		return nil, syscall.ENOENT
	}
	return []byte(target), 0
}
