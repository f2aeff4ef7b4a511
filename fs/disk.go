package fs

import (
	"context"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/diskview"
)

// diskFiles is the disk view of a mount: the pool of open chains, and the
// disk nodes opened so far, whose cached content a job drops.
type diskFiles struct {
	pool  *diskview.Pool
	mu    sync.Mutex
	nodes map[string]*diskNode // by image path
}

// diskNode is an image's disk file: its guest-visible content, read-only.
// Its size is the virtual size; its st_blocks the space the chain's files
// take (the top's alone until it is open), at most the size, so that copy
// tools see a sparse file and ask for its holes.
//
// Reads bypass the kernel's page cache (direct I/O): measured faster than
// cached reads, since the pool's read-ahead and map of holes serve
// sequential readers and holes, and nothing is copied into the cache.
// mmap still works, through the page cache (DIRECT_IO_ALLOW_MMAP): an open
// whose chain is in the same state as at the node's previous open keeps the
// mapped pages (FOPEN_KEEP_CACHE); any other open drops them, and a job that
// changes the chain drops them at once (NotifyContent).
type diskNode struct {
	node
	mu      sync.Mutex
	lastKey string
}

var (
	_ gofs.NodeOpener    = (*diskNode)(nil)
	_ gofs.NodeGetattrer = (*diskNode)(nil)
	_ gofs.NodeSetattrer = (*diskNode)(nil)
	_ gofs.NodeLseeker   = (*diskNode)(nil)
)

func (d *diskNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx, stop := callerContext(ctx)
	defer stop()
	id, st, errno := d.imageID()
	if errno != 0 {
		return errno
	}
	setAttr(&out.Attr, kindDisk, &st)
	if h, ok := fh.(*diskHandle); ok {
		out.Size = uint64(h.h.Size())
		out.Blksize = diskBlockSize
		out.Blocks = min(uint64(h.h.Blocks()), (out.Size+511)/512)
	} else {
		d.fs.diskSize(ctx, d.imageRel(), id, &out.Attr, &st)
	}
	return 0
}

// diskBlockSize is the disk file's st_blksize: the largest read the mount
// passes on in one request.
const diskBlockSize = 1 << 20

// diskSize sets the size of the disk file of the image at rel, whose file's
// stat is st: its virtual size, from its probe, and the top file's blocks.
// An image that cannot be probed shows size 0; its open says why.
func (f *FS) diskSize(ctx context.Context, rel string, id chainmodel.FileID, a *fuse.Attr, st *unix.Stat_t) {
	a.Blksize = diskBlockSize
	c, ok := f.imageClass(ctx, rel, id)
	if !ok || c.err != nil {
		return
	}
	if info, err := f.imageInfo(ctx, rel, c, id); err == nil {
		a.Size = uint64(info.VirtualSize)
		a.Blocks = min(uint64(st.Blocks), (a.Size+511)/512)
	}
}

func (d *diskNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return d.refused()
}

func (d *diskNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, d.refused()
	}
	rel := d.imageRel()
	id, _, errno := d.imageID()
	if errno != 0 {
		return nil, 0, errno
	}
	fid := id
	c, ok := d.fs.imageClass(ctx, rel, fid)
	if !ok {
		return nil, 0, syscall.ENOENT
	}
	if c.err != nil {
		return nil, 0, d.fs.errno("disk", rel, c.err)
	}
	h, err := d.fs.disks.pool.Open(ctx, rel, c.format, &fid)
	if err != nil {
		return nil, 0, d.fs.errno("disk", rel, err)
	}
	d.fs.disks.mu.Lock()
	d.fs.disks.nodes[rel] = d
	d.fs.disks.mu.Unlock()
	d.mu.Lock()
	open := uint32(fuse.FOPEN_DIRECT_IO)
	if d.lastKey == h.Key() {
		open |= fuse.FOPEN_KEEP_CACHE
	}
	d.lastKey = h.Key()
	d.mu.Unlock()
	return &diskHandle{h: h, node: d, rel: rel}, open, 0
}

func (d *diskNode) Lseek(ctx context.Context, fh gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	h, ok := fh.(*diskHandle)
	if !ok {
		return 0, syscall.EBADF
	}
	return h.Lseek(ctx, off, whence)
}

// forget drops the kernel's cached content of the node: its chain changed.
func (d *diskNode) forget() {
	d.mu.Lock()
	d.lastKey = ""
	d.mu.Unlock()
	d.NotifyContent(0, 0)
}

// diskHandle is one open of a disk file.
type diskHandle struct {
	h    *diskview.Handle
	node *diskNode
	rel  string
}

var (
	_ gofs.FileReader   = (*diskHandle)(nil)
	_ gofs.FileLseeker  = (*diskHandle)(nil)
	_ gofs.FileReleaser = (*diskHandle)(nil)
)

func (dh *diskHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	size := dh.h.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	p := dest[:min(int64(len(dest)), size-off)]
	if err := dh.h.ReadAt(ctx, p, off); err != nil {
		return nil, dh.node.fs.errno("disk", dh.rel, err)
	}
	return fuse.ReadResultData(p), 0
}

func (dh *diskHandle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	ctx, stop := callerContext(ctx)
	defer stop()
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	if int64(off) < 0 || int64(off) >= dh.h.Size() {
		return 0, syscall.ENXIO
	}
	pos, ok, err := dh.h.Seek(ctx, int64(off), whence == unix.SEEK_DATA)
	if err != nil {
		return 0, dh.node.fs.errno("disk", dh.rel, err)
	}
	if !ok {
		return 0, syscall.ENXIO
	}
	return uint64(pos), 0
}

func (dh *diskHandle) Release(ctx context.Context) syscall.Errno {
	dh.h.Close()
	return 0
}

// revokeDisks takes the chains holding ids away from their disk readers
// before job changes them, and drops what the kernel cached of them.
func (f *FS) revokeDisks(ids []chainmodel.FileID, job string) {
	for _, rel := range f.disks.pool.Revoke(ids, job) {
		f.disks.mu.Lock()
		d := f.disks.nodes[rel]
		f.disks.mu.Unlock()
		if d != nil {
			d.forget()
		}
	}
}

// Close ends the disk view's workers and closes its chains.
func (f *FS) Close() {
	f.disks.pool.Close()
}
