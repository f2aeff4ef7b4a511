// Package fs is the mounted filesystem: go-fuse nodes over a directory of
// images, kept thin over the model it does not own. Which files are images
// comes from worker probes (ctl.Opener.Probe); what the generated files
// say comes from ctl, exactly as the command line prints it; the control files
// hand their arguments to ctl's grammar and run the operation as a ctl job.
//
// The tree mirrors IMAGEDIR: every directory appears, every image file appears
// as a directory, and every other file is hidden.
//
//	<image>/info.json    instarfs info --output=json <image>
//	<image>/chain.json   instarfs info --output=json --backing-chain <image>
//	<image>/map.json     instarfs map --output=json <image>
//	<image>/map.svg      instarfs map --output=svg <image>
//	<image>/check.json   instarfs check --output=json <image>
//	<image>/backing      symlink to the backing image's directory, when inside IMAGEDIR
//	<image>/status       idle | running <op> <n>% | busy: <op> of <image> | ok <op> | failed <op>: <CODE>: <message>
//	<image>/result.json  the result envelope of the last operation on the image
//	<image>/rebase       control file; reads as its usage (absent on a read-only mount)
//	<image>/commit       control file; reads as its usage (absent on a read-only mount)
//	<image>/disk         the image's guest-visible content, read-only (package diskview)
//
// Image names are relative to IMAGEDIR, which is the directory the opener's
// path policy takes relative names against (chainmodel.Policy.Dir): the names
// in the generated files are then the ones the command line prints when it is
// run there.
//
// Inode numbers derive from the host file's device and inode, so they are
// stable across lookups and remounts; owners and modes mirror the host's
// (attr.go). Generated files are opened with direct I/O and serve every read
// from a snapshot taken at open, so a reader never sees a torn or stale
// document; stat reports the size the document has now. Nothing in a FUSE
// request waits on a job, except the write to a control file that started it,
// and the open of a JSON file whose chain the job has locked and that has no
// earlier document to answer. Interrupts cancel only for terminating signals
// (interrupt.go).
package fs

import (
	"context"
	"hash/fnv"
	"path/filepath"
	"sync"
	"syscall"
	"time"
	"unsafe"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/diskview"
	"instarfs/errcode"
	"instarfs/lru"
)

// Config is what the filesystem serves and how.
type Config struct {
	// ImageDir is the absolute image directory: a root of Opener's path
	// policy, and its Dir, which relative image names are taken against.
	ImageDir string
	Opener   *ctl.Opener
	Jobs     *ctl.JobManager
	// ReadOnly hides the control files and refuses every change.
	ReadOnly bool
	// Cache keeps what each file is and the generated documents. It may be
	// shared with Opener's probe cache, under one budget; nil means a cache
	// of ctl.DefaultCacheBytes of the mount's own.
	Cache *lru.Cache[any, any]
	// MaxDocument bounds the size of a generated document: a larger one
	// fails to open with DOCUMENT_TOO_LARGE. 0 means ctl.DefaultMaxDocument.
	MaxDocument int64
	Log         logrus.FieldLogger
	// DiskWorkers bounds the live workers of the disk view; 0 means
	// diskview.DefaultMaxWorkers.
	DiskWorkers int
	// DiskIdle is how long a disk worker outlives its last read; 0 means
	// diskview.DefaultIdle.
	DiskIdle time.Duration
}

// FS is the state shared by every node of one mount.
type FS struct {
	// cfg.Cache holds a class per chainmodel.FileState (what each file
	// is) and a genCacheEntry per genSlot (the last document made per
	// image and kind).
	cfg     Config
	root    *chainmodel.Root // ImageDir, held open
	id      chainmodel.FileID
	started time.Time // when the mount was made: the times of files that never changed
	// mountpoint is where the tree is mounted (set by Mount): absolute names
	// in control files may point into it.
	mountpoint string

	mu       sync.Mutex
	rawNamed map[string]bool // paths (relative to ImageDir) some image names as raw backing
	disks    *diskFiles
}

// class is what a regular file of IMAGEDIR is.
type class struct {
	image  bool
	format string // "" when detected, "raw" for a file named as raw backing
	err    error  // a recognised but refused image: generated files fail with it
}

// size estimates the bytes a cached class keeps alive, its key included.
func (c class) size() int64 {
	return int64(unsafe.Sizeof(chainmodel.FileState{})+unsafe.Sizeof(c)) + int64(len(c.format)) + errSize(c.err)
}

// errSize estimates the bytes an error keeps alive: an *errcode.Error holds a
// code and a message.
func errSize(err error) int64 {
	if err == nil {
		return 0
	}
	return 64 + 2*int64(len(err.Error()))
}

// New returns the filesystem for cfg, to pass to Mount.
func New(cfg Config) (*FS, error) {
	if !filepath.IsAbs(cfg.ImageDir) {
		return nil, errcode.New(errcode.BadArguments, "image directory %q is not absolute", cfg.ImageDir)
	}
	if cfg.Opener.Policy.Dir != filepath.Clean(cfg.ImageDir) {
		return nil, errcode.New(errcode.BadArguments, "the path policy takes relative names against %q, not the image directory %s", cfg.Opener.Policy.Dir, cfg.ImageDir)
	}
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	if cfg.Jobs == nil {
		cfg.Jobs = &ctl.JobManager{}
	}
	loc, ok := cfg.Opener.Policy.Place(cfg.ImageDir)
	if !ok || loc.Rel != "." {
		return nil, errcode.New(errcode.BadArguments, "the image directory %s is not a root of the path policy", cfg.ImageDir)
	}
	st, err := cfg.Opener.Policy.Stat(loc, chainmodel.How{Dir: true})
	if err != nil {
		return nil, err
	}
	if cfg.Cache == nil {
		cfg.Cache = lru.New[any, any](ctl.DefaultCacheBytes)
	}
	if cfg.MaxDocument <= 0 {
		cfg.MaxDocument = ctl.DefaultMaxDocument
	}
	pool := diskview.New(diskview.Config{Opener: cfg.Opener, MaxWorkers: cfg.DiskWorkers, Idle: cfg.DiskIdle, Busy: cfg.Jobs.BusyError, Log: cfg.Log})
	return &FS{
		cfg:      cfg,
		root:     loc.Root,
		id:       chainmodel.IDOf(&st),
		started:  time.Now(),
		rawNamed: map[string]bool{},
		disks:    &diskFiles{pool: pool, nodes: map[string]*diskNode{}},
	}, nil
}

// Root returns the root node.
func (f *FS) Root() gofs.InodeEmbedder {
	return &dirNode{node: node{fs: f}, id: f.id}
}

// hostPath is the host path of rel, a path relative to ImageDir. It is for
// lexical resolution only: files are opened by loc.
func (f *FS) hostPath(rel string) string {
	return filepath.Join(f.cfg.ImageDir, rel)
}

// loc is where rel, a path relative to ImageDir, lies for the path policy.
func (f *FS) loc(rel string) chainmodel.Loc {
	return chainmodel.Loc{Root: f.root, Rel: filepath.Clean(rel)}
}

// stat returns the attributes of the file at rel, which must be the file
// (directory with dir) the mount showed as want.
func (f *FS) stat(rel string, dir bool, want chainmodel.FileID) (unix.Stat_t, syscall.Errno) {
	st, err := f.cfg.Opener.Policy.Stat(f.loc(rel), chainmodel.How{Dir: dir, Want: &want})
	if err != nil {
		return st, errcode.Of(err).Errno()
	}
	return st, 0
}

// Inode kinds, mixed into inode numbers.
const (
	kindDir = iota + 1
	kindImage
	kindInfo
	kindChain
	kindMap
	kindCheck
	kindBacking
	kindStatus
	kindResult
	kindRebase
	kindCommit
	kindMapSVG
	kindDisk
	kindRepair
)

// inodeNumber derives a stable inode number from a host file's identity and the
// kind of node shown for it. It avoids 0, 1 (the root) and ^0.
func inodeNumber(kind int, dev, ino uint64) uint64 {
	h := fnv.New64a()
	var b [17]byte
	b[0] = byte(kind)
	for i := 0; i < 8; i++ {
		b[1+i] = byte(dev >> (8 * i))
		b[9+i] = byte(ino >> (8 * i))
	}
	h.Write(b[:])
	n := h.Sum64()
	if n <= 1 || n == ^uint64(0) {
		n = 2 + uint64(kind)
	}
	return n
}

// classify says whether the regular file at rel is an image, asking a worker
// (the answer is cached by the file's identity). The host reads no byte of it.
func (f *FS) classify(ctx context.Context, rel string, st *unix.Stat_t) class {
	key := chainmodel.StateOf(st)
	v, ok := f.cfg.Cache.Get(key)
	c, _ := v.(class)
	if !ok {
		var final bool
		c, final = f.probe(ctx, rel, chainmodel.IDOf(st))
		if final && ctx.Err() == nil {
			f.cfg.Cache.Add(key, c, c.size())
		}
	}
	f.mu.Lock()
	named := f.rawNamed[rel]
	f.mu.Unlock()
	if !c.image && named {
		return class{image: true, format: "raw"}
	}
	return c
}

// probeTries is how often a probe whose worker failed is tried.
const probeTries = 3

// minImageSize is the size below which a file cannot be an image: no qcow2,
// vmdk or partition table fits. Such files are hidden without a probe.
const minImageSize = 512

// probe asks a worker what the file at rel, which must be the file id, is.
// final is false when the answer says nothing about the file (the worker
// failed, the file vanished or was replaced), so it is not cached.
func (f *FS) probe(ctx context.Context, rel string, id chainmodel.FileID) (c class, final bool) {
	file, st, err := f.cfg.Opener.Policy.Open(f.loc(rel), chainmodel.How{Access: chainmodel.Read, Want: &id})
	if err != nil {
		return class{}, false // gone, or not the file listed any more
	}
	defer file.Close()
	if st.Size < minImageSize {
		return class{}, true
	}
	info, _, err := f.cfg.Opener.Probe(ctx, file, rel, "", true)
	for try := 1; err != nil && errcode.Of(err).Transient() && try < probeTries && ctx.Err() == nil; try++ {
		// A worker that could not start or died says nothing about the file
		// (a loaded host, a transient resource limit): ask again rather than
		// hide an image.
		f.cfg.Log.WithFields(logrus.Fields{"image": rel, "error": err}).Warn("probe failed; retrying")
		time.Sleep(time.Duration(try) * 50 * time.Millisecond)
		info, _, err = f.cfg.Opener.Probe(ctx, file, rel, "", true)
	}
	if err != nil {
		switch code := errcode.Of(err); {
		case code.BadImage():
			// Recognisably an image, but one instarfs refuses: show it, and let
			// its files say why.
			return class{image: true, err: err}, true
		case code == errcode.FormatNotDetected:
			return class{}, true
		}
		f.cfg.Log.WithFields(logrus.Fields{"image": rel, "error": err}).Warn("probe failed; the file is hidden until it is looked up again")
		return class{}, false
	}
	if info.BackingFilename != "" && info.BackingFilenameFormat == "raw" {
		if loc, err := f.cfg.Opener.Policy.Locate(filepath.Dir(f.hostPath(rel)), info.BackingFilename); err == nil && loc.Root == f.root {
			f.mu.Lock()
			f.rawNamed[loc.Rel] = true
			f.mu.Unlock()
		}
	}
	return class{image: true}, true
}

// errno maps an error to what a FUSE request returns, and logs what the errno
// cannot say.
func (f *FS) errno(what, rel string, err error) syscall.Errno {
	e := errcode.Of(err).Errno()
	f.cfg.Log.WithFields(logrus.Fields{"image": rel, "file": what, "code": errcode.Of(err), "error": err.Error()}).Info("request refused")
	return e
}

// node is embedded by every node type: it refuses every change to the
// namespace and to extended attributes, which go-fuse would otherwise let
// succeed or answer misleadingly.
type node struct {
	gofs.Inode
	fs *FS
}

func (n *node) refused() syscall.Errno {
	if n.fs.cfg.ReadOnly {
		return syscall.EROFS
	}
	return syscall.EPERM
}

func (n *node) Unlink(context.Context, string) syscall.Errno { return n.refused() }
func (n *node) Rmdir(context.Context, string) syscall.Errno  { return n.refused() }
func (n *node) Rename(context.Context, string, gofs.InodeEmbedder, string, uint32) syscall.Errno {
	return n.refused()
}
func (n *node) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.refused()
}
func (n *node) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.refused()
}
func (n *node) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, n.refused()
}
func (n *node) Symlink(context.Context, string, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.refused()
}
func (n *node) Link(context.Context, gofs.InodeEmbedder, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.refused()
}
func (n *node) Setxattr(context.Context, string, []byte, uint32) syscall.Errno { return n.refused() }
func (n *node) Removexattr(context.Context, string) syscall.Errno              { return n.refused() }

var (
	_ gofs.NodeUnlinker      = (*node)(nil)
	_ gofs.NodeRmdirer       = (*node)(nil)
	_ gofs.NodeRenamer       = (*node)(nil)
	_ gofs.NodeMkdirer       = (*node)(nil)
	_ gofs.NodeMknoder       = (*node)(nil)
	_ gofs.NodeCreater       = (*node)(nil)
	_ gofs.NodeSymlinker     = (*node)(nil)
	_ gofs.NodeLinker        = (*node)(nil)
	_ gofs.NodeSetxattrer    = (*node)(nil)
	_ gofs.NodeRemovexattrer = (*node)(nil)
)

// rel is the node's path relative to the root, which is its path relative to
// ImageDir for directories and image directories.
func (n *node) rel() string {
	p := n.Path(nil)
	if p == "" {
		return "."
	}
	return p
}
