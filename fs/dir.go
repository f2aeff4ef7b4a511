package fs

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/errcode"
)

// dirNode mirrors a directory of IMAGEDIR (the root included): its
// subdirectories and its images; other files are hidden. It stays the
// directory it was looked up as: when its name comes to mean another file (a
// symlink, another directory), it serves nothing (IMAGE_CHANGED, EBUSY).
type dirNode struct {
	node
	id chainmodel.FileID
}

var (
	_ gofs.NodeLookuper  = (*dirNode)(nil)
	_ gofs.NodeReaddirer = (*dirNode)(nil)
	_ gofs.NodeGetattrer = (*dirNode)(nil)
)

func (d *dirNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	st, errno := d.fs.stat(d.rel(), true, d.id)
	if errno != 0 {
		return errno
	}
	setAttr(&out.Attr, kindDir, &st)
	return 0
}

// entry is one child of a mirrored directory.
type entry struct {
	name  string
	dir   bool
	st    unix.Stat_t
	class class
}

// open opens the host directory (for access), checked to be the one the
// node showed.
func (d *dirNode) open(access chainmodel.Access) (*os.File, syscall.Errno) {
	id := d.id
	f, _, err := d.fs.cfg.Opener.Policy.Open(d.fs.loc(d.rel()), chainmodel.How{Access: access, Dir: true, Want: &id})
	if err != nil {
		return nil, errcode.Of(err).Errno()
	}
	return f, 0
}

// lstat stats the entry name of the open directory dir, without following a
// symlink and without resolving any path again.
func lstat(dir *os.File, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	rel := filepath.Join(d.rel(), name)
	dir, errno := d.open(chainmodel.Path)
	if errno != 0 {
		return nil, errno
	}
	st, err := lstat(dir, name)
	dir.Close()
	if err != nil {
		if err == unix.ENAMETOOLONG {
			return nil, syscall.ENAMETOOLONG
		}
		return nil, syscall.ENOENT
	}
	e := entry{name: name, st: st}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.dir = true
	case unix.S_IFREG:
		e.class = d.fs.classify(ctx, rel, &st)
		if !e.class.image {
			// It may be a raw file that a sibling names as its backing file:
			// probing the siblings (cached) finds out.
			d.scan(ctx)
			e.class = d.fs.classify(ctx, rel, &st)
		}
		if !e.class.image {
			return nil, syscall.ENOENT
		}
	default:
		return nil, syscall.ENOENT
	}
	return d.child(ctx, e, out), 0
}

func (d *dirNode) child(ctx context.Context, e entry, out *fuse.EntryOut) *gofs.Inode {
	if e.dir {
		setAttr(&out.Attr, kindDir, &e.st)
		return d.NewInode(ctx, &dirNode{node: node{fs: d.fs}, id: chainmodel.IDOf(&e.st)},
			gofs.StableAttr{Mode: unix.S_IFDIR, Ino: inodeNumber(kindDir, e.st.Dev, e.st.Ino)})
	}
	img := &imageNode{node: node{fs: d.fs}, id: chainmodel.IDOf(&e.st)}
	setAttr(&out.Attr, kindImage, &e.st)
	return d.NewInode(ctx, img, gofs.StableAttr{Mode: unix.S_IFDIR, Ino: inodeNumber(kindImage, e.st.Dev, e.st.Ino)})
}

// scan lists the host directory and classifies every regular file in it, in
// two passes: a raw file is an image only when another image names it as its
// raw backing file, which the first pass learns.
func (d *dirNode) scan(ctx context.Context) ([]entry, syscall.Errno) {
	dir := d.rel()
	df, errno := d.open(chainmodel.Read)
	if errno != 0 {
		return nil, errno
	}
	defer df.Close()
	names, err := df.Readdirnames(-1)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	sort.Strings(names)
	var out []entry
	for _, name := range names {
		st, err := lstat(df, name)
		if err != nil {
			continue
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			out = append(out, entry{name: name, dir: true, st: st})
		case unix.S_IFREG:
			out = append(out, entry{name: name, st: st})
		}
	}
	for pass := 0; pass < 2; pass++ {
		var wg sync.WaitGroup
		sem := make(chan struct{}, probeParallelism)
		for i := range out {
			if out[i].dir || out[i].class.image {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func(e *entry) {
				defer func() { <-sem; wg.Done() }()
				e.class = d.fs.classify(ctx, filepath.Join(dir, e.name), &e.st)
			}(&out[i])
		}
		wg.Wait()
		if ctx.Err() != nil {
			return nil, syscall.EINTR
		}
	}
	return out, 0
}

// probeParallelism is how many workers a directory listing runs at once to
// classify new files.
const probeParallelism = 4

func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	ents, errno := d.scan(ctx)
	if errno != 0 {
		return nil, errno
	}
	list := dots(&d.Inode)
	for _, e := range ents {
		switch {
		case e.dir:
			list = append(list, fuse.DirEntry{Name: e.name, Mode: unix.S_IFDIR, Ino: inodeNumber(kindDir, e.st.Dev, e.st.Ino)})
		case e.class.image:
			list = append(list, fuse.DirEntry{Name: e.name, Mode: unix.S_IFDIR, Ino: inodeNumber(kindImage, e.st.Dev, e.st.Ino)})
		}
	}
	return gofs.NewListDirStream(list), 0
}
