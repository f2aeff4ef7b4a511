package fs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"instarfs/ctl"
)

// imageNode is the directory shown for an image file.
type imageNode struct {
	node
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
	mode uint32
}

var imageFiles = []imageFile{
	{"info.json", kindInfo, unix.S_IFREG | 0o444},
	{"chain.json", kindChain, unix.S_IFREG | 0o444},
	{"map.json", kindMap, unix.S_IFREG | 0o444},
	{"check.json", kindCheck, unix.S_IFREG | 0o444},
	{"backing", kindBacking, unix.S_IFLNK | 0o777},
	{"status", kindStatus, unix.S_IFREG | 0o444},
	{"result.json", kindResult, unix.S_IFREG | 0o444},
	{"rebase", kindRebase, unix.S_IFREG | 0o200},
	{"commit", kindCommit, unix.S_IFREG | 0o200},
}

func (im *imageNode) stat() (unix.Stat_t, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Lstat(im.fs.hostPath(im.rel()), &st); err != nil {
		return st, gofs.ToErrno(err)
	}
	return st, 0
}

func (im *imageNode) fillAttr(a *fuse.Attr, st *unix.Stat_t) {
	a.Mode = unix.S_IFDIR | 0o755
	a.Nlink = 2
	setTimes(a, st)
	owner(a)
}

func (im *imageNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	st, errno := im.stat()
	if errno != 0 {
		return errno
	}
	im.fillAttr(&out.Attr, &st)
	return 0
}

// shown reports whether f appears in this image directory now.
func (im *imageNode) shown(ctx context.Context, f imageFile) bool {
	switch f.kind {
	case kindRebase, kindCommit:
		return !im.fs.cfg.ReadOnly
	case kindBacking:
		_, ok := im.backingLink(ctx)
		return ok
	}
	return true
}

// backingLink is the target of the backing symlink: the backing image's
// directory, relative to this one, when the backing file lies in IMAGEDIR.
func (im *imageNode) backingLink(ctx context.Context) (string, bool) {
	rel := im.rel()
	c, st, ok := im.fs.imageClass(ctx, rel)
	if !ok || c.err != nil {
		return "", false
	}
	name, err := im.fs.backingName(ctx, rel, c, &st)
	if err != nil || name == "" {
		return "", false
	}
	root, brel, err := im.fs.cfg.Opener.Policy.Locate(filepath.Dir(im.fs.hostPath(rel)), name)
	if err != nil || root != im.fs.cfg.ImageDir {
		return "", false
	}
	target, err := filepath.Rel(rel, brel)
	if err != nil {
		return "", false
	}
	return target, true
}

func (im *imageNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
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
		out.Mode = f.mode
		out.Nlink = 1
		setTimes(&out.Attr, &st)
		owner(&out.Attr)
		if im.fs.jobTimes(&out.Attr, f.kind, &st) {
			out.SetAttrTimeout(uncached)
		}
		return im.NewInode(ctx, im.newChild(f), gofs.StableAttr{Mode: f.mode & unix.S_IFMT, Ino: inodeNumber(f.kind, st.Dev, st.Ino)}), 0
	}
	return nil, syscall.ENOENT
}

func (im *imageNode) newChild(f imageFile) gofs.InodeEmbedder {
	switch f.kind {
	case kindBacking:
		return &backingNode{node: node{fs: im.fs}}
	case kindRebase, kindCommit:
		return &controlNode{node: node{fs: im.fs}, op: f.name}
	}
	return &genNode{node: node{fs: im.fs}, kind: f.kind, mode: f.mode}
}

func (im *imageNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	st, errno := im.stat()
	if errno != 0 {
		return nil, errno
	}
	var list []fuse.DirEntry
	for _, f := range imageFiles {
		if im.shown(ctx, f) {
			list = append(list, fuse.DirEntry{Name: f.name, Mode: f.mode & unix.S_IFMT, Ino: inodeNumber(f.kind, st.Dev, st.Ino)})
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

// imageID is the identity of the image whose directory holds n.
func (n *node) imageID() (ctl.FileID, unix.Stat_t, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Lstat(n.fs.hostPath(n.imageRel()), &st); err != nil {
		return ctl.FileID{}, st, gofs.ToErrno(err)
	}
	return ctl.FileID{Dev: st.Dev, Ino: st.Ino}, st, 0
}

// imageClass classifies the image at rel again (a cache hit while the file is
// unchanged).
func (f *FS) imageClass(ctx context.Context, rel string) (class, unix.Stat_t, bool) {
	var st unix.Stat_t
	if unix.Lstat(f.hostPath(rel), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return class{}, st, false
	}
	c := f.classify(ctx, rel, &st)
	return c, st, c.image
}

// backingName is the backing file name the image at rel records, from its
// probe (cached by identity).
func (f *FS) backingName(ctx context.Context, rel string, c class, st *unix.Stat_t) (string, error) {
	file, err := os.OpenFile(f.hostPath(rel), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer file.Close()
	info, _, err := f.cfg.Opener.Probe(ctx, file, rel, c.format, c.format == "")
	if err != nil {
		return "", err
	}
	return info.BackingFilename, nil
}

// backingNode is the backing symlink.
type backingNode struct {
	node
}

var _ gofs.NodeReadlinker = (*backingNode)(nil)

func (b *backingNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	_, parent := b.Parent()
	im, ok := parent.Operations().(*imageNode)
	if !ok {
		return nil, syscall.EIO
	}
	target, ok := im.backingLink(ctx)
	if !ok {
		return nil, syscall.ENOENT
	}
	return []byte(strings.TrimSuffix(target, "/")), 0
}
