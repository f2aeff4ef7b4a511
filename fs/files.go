package fs

import (
	"bytes"
	"context"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
)

// genNode is a generated, read-only file: one of the JSON documents, status or
// result.json.
type genNode struct {
	node
	kind int
}

var (
	_ gofs.NodeOpener    = (*genNode)(nil)
	_ gofs.NodeGetattrer = (*genNode)(nil)
	_ gofs.NodeSetattrer = (*genNode)(nil)
)

// Getattr reports the size of the content an open would read now, so that
// tools that trust st_size (tar, rsync, mmap) read it whole: the documents are
// made here as at open, and cached by the identity of the files they depend on.
// A document that cannot be made reports size 0; opening it gives the error.
func (g *genNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx, stop := callerContext(ctx)
	defer stop()
	_, st, errno := g.imageID()
	if errno != 0 {
		return errno
	}
	setAttr(&out.Attr, g.kind, &st)
	if g.fs.jobTimes(&out.Attr, g.kind, &st) {
		out.SetTimeout(uncached)
	}
	if s, ok := fh.(*snapshot); ok {
		out.Size = uint64(len(s.data)) // what this open reads
	} else {
		out.Size = g.fs.size(ctx, g.kind, g.imageRel(), &st)
	}
	return 0
}

// uncached is the attribute timeout of files whose attributes the kernel must
// not cache: go-fuse replaces a timeout of 0 with the mount's default.
const uncached = time.Nanosecond

// jobTimes sets the times of status and result.json, the image st's job
// files, to when their content last changed (the mount's start before any
// change), and reports whether kind is one of them. The kernel must not cache
// these attributes: a tool that watches the mtime sees each change.
func (f *FS) jobTimes(a *fuse.Attr, kind int, st *unix.Stat_t) bool {
	if kind != kindStatus && kind != kindResult {
		return false
	}
	status, result := f.cfg.Jobs.Changed(chainmodel.IDOf(st))
	t := status
	if kind == kindResult {
		t = result
	}
	if t.IsZero() {
		t = f.started
	}
	a.SetTimes(nil, &t, &t)
	return true
}

func (g *genNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if g.fs.cfg.ReadOnly {
		return syscall.EROFS
	}
	return syscall.EACCES
}

func (g *genNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		if g.fs.cfg.ReadOnly {
			return nil, 0, syscall.EROFS
		}
		return nil, 0, syscall.EACCES
	}
	cctx, stop := callerContext(ctx)
	data, errno := g.content(cctx)
	stop()
	if errno != 0 {
		return nil, 0, errno
	}
	return &snapshot{data: data}, fuse.FOPEN_DIRECT_IO, 0
}

// content makes the file's content now.
func (g *genNode) content(ctx context.Context) ([]byte, syscall.Errno) {
	id, _, errno := g.imageID()
	if errno != 0 {
		return nil, errno
	}
	rel := g.imageRel()
	data, err := g.fs.document(ctx, g.kind, rel, id)
	for errcode.Of(err) == errcode.ImageInUse {
		// A job of this mount on the chain holds its locks: answer what
		// was made last, or wait for the job and try again. A lock another
		// process holds is still EBUSY.
		held, busy := g.fs.chainBusy(ctx, rel, id)
		if !busy {
			break
		}
		if last := g.fs.lastDocument(g.kind, id); last != nil {
			return last, 0
		}
		if g.fs.cfg.Jobs.WaitFree(ctx, held) != nil {
			return nil, syscall.EINTR
		}
		data, err = g.fs.document(ctx, g.kind, rel, id)
	}
	if err != nil {
		return nil, g.fs.errno(fileName(g.kind), rel, err)
	}
	return data, 0
}

// chainBusy returns a file of the chain of the image at rel (the file id)
// that a job of this mount holds. It follows the backing names the probes
// recorded (cached by identity) as far as they stay in IMAGEDIR.
func (f *FS) chainBusy(ctx context.Context, rel string, id chainmodel.FileID) (chainmodel.FileID, bool) {
	for depth := 0; depth < maxChainWalk; depth++ {
		if f.cfg.Jobs.BusyError(id) != nil {
			return id, true
		}
		c, ok := f.imageClass(ctx, rel, id)
		if !ok || c.err != nil {
			break
		}
		name, err := f.backingName(ctx, rel, c, id)
		if err != nil || name == "" {
			break
		}
		loc, err := f.cfg.Opener.Policy.Locate(filepath.Dir(f.hostPath(rel)), name)
		if err != nil || loc.Root != f.root {
			break
		}
		st, err := f.cfg.Opener.Policy.Stat(loc, chainmodel.How{})
		if err != nil {
			break
		}
		rel, id = loc.Rel, chainmodel.IDOf(&st)
	}
	return chainmodel.FileID{}, false
}

// maxChainWalk bounds chainBusy's walk, as chains are bounded.
const maxChainWalk = 16

// lastDocument is the document of kind made last for the image id, whatever
// the state of its files now; nil when none was made.
func (f *FS) lastDocument(kind int, id chainmodel.FileID) []byte {
	if v, ok := f.cfg.Cache.Get(genSlot{kind, id}); ok {
		return v.(genCacheEntry).data
	}
	return nil
}

// document makes the generated file of kind for the image at rel, whose
// identity is id.
func (f *FS) document(ctx context.Context, kind int, rel string, id chainmodel.FileID) ([]byte, error) {
	switch kind {
	case kindStatus:
		s := f.cfg.Jobs.Status(id)
		if f.cfg.Jobs.BusyError(id) == nil && f.heldByOther(rel, id) {
			s += "; in use by another process"
		}
		return []byte(s + "\n"), nil
	case kindResult:
		if env := f.cfg.Jobs.Result(id); env != nil {
			return env.JSON(), nil
		}
		return []byte("null\n"), nil
	}
	c, ok := f.imageClass(ctx, rel, id)
	if !ok {
		return nil, errcode.New(errcode.NotFound, "'%s' is no longer an image", rel)
	}
	if c.err != nil {
		return nil, c.err
	}
	return f.generate(ctx, kind, rel, id, c.format)
}

// ownJob reports whether a job of this mount holds an image of c.
func (f *FS) ownJob(c *chainmodel.Chain) bool {
	for _, im := range c.Images {
		if f.cfg.Jobs.BusyError(im.ID()) != nil {
			return true
		}
	}
	return false
}

// heldByOther reports whether another process (a running VM) holds the image
// at rel (the file id) so that reading it needs force share. It reads nothing
// and takes no lock.
func (f *FS) heldByOther(rel string, id chainmodel.FileID) bool {
	file, _, err := f.cfg.Opener.Policy.Open(f.loc(rel), chainmodel.How{Access: chainmodel.Read, Want: &id, Name: rel})
	if err != nil {
		return false
	}
	defer file.Close()
	return chainmodel.HeldByOther(file)
}

// size is st_size of the file of kind in the directory of the image at rel
// (host state st): what reading it would give now. A document that cannot be
// made has size 0; opening it reports why.
func (f *FS) size(ctx context.Context, kind int, rel string, st *unix.Stat_t) uint64 {
	switch kind {
	case kindDir, kindImage:
		return 0
	case kindRebase, kindCommit, kindRepair:
		return uint64(len(ctl.Usage(fileName(kind))))
	case kindBacking:
		target, _ := f.backingLink(ctx, rel, chainmodel.IDOf(st))
		return uint64(len(target))
	}
	id := chainmodel.IDOf(st)
	data, err := f.document(ctx, kind, rel, id)
	if errcode.Of(err) == errcode.ImageInUse {
		data = f.lastDocument(kind, id) // never wait for a job here
	} else if err != nil {
		return 0
	}
	return uint64(len(data))
}

// genSlot names one cached document: the last one made per image and kind.
type genSlot struct {
	kind int
	id   chainmodel.FileID
}

type genCacheEntry struct {
	key  string // the identities of every file the document depends on
	data []byte
	err  error // the document was refused (DOCUMENT_TOO_LARGE)
}

// generate makes info.json, chain.json, map.json, map.svg or check.json for the image
// at rel, exactly as the command line prints them, through a worker. Each is
// cached by the identity of the files it depends on.
//
// info.json describes the top alone, as qemu-img info does: it comes from the
// probe cache, which the probe that showed the image filled (no worker), and
// costs none of the survey's work (the map, the check). The others come from
// one survey of the chain.
func (f *FS) generate(ctx context.Context, kind int, rel string, id chainmodel.FileID, format string) ([]byte, error) {
	if kind != kindInfo {
		if data, ok, err := f.surveyed(ctx, kind, rel, id, format); ok {
			return data, err
		}
	}
	o := f.cfg.Opener
	noBacking := kind == kindInfo || kind == kindCheck
	opts := ctl.OpenOptions{Format: format, NoBacking: noBacking, Want: &id, Partial: kind == kindChain}
	c, err := o.OpenChain(ctx, rel, opts)
	if errcode.Of(err) == errcode.ImageInUse {
		// Another process (a running VM) holds an image of the chain: read
		// it as qemu-img -U does, without locks; status says it is in use.
		// Not when it is this mount's own job: that image is being changed.
		if c != nil {
			c.Close() // the members a partial open described, still locked
		}
		opts.ForceShare = true
		inUse := err
		if c, err = o.OpenChain(ctx, rel, opts); c != nil && f.ownJob(c) {
			c.Close()
			return nil, inUse
		}
	}
	if err != nil && c != nil && errcode.Of(err) != errcode.BackingNotFound {
		c.Close() // only a missing member is shown; a refused one is an error
		return nil, err
	}
	if err != nil && c != nil {
		// chain.json says which member is missing; not cached, as the file
		// may appear at any time.
		defer c.Close()
		last := c.Images[len(c.Images)-1]
		return ctl.PartialChainJSON(ctl.Info(c, true), ctl.Unopened{
			Filename: chainmodel.FullBackingName(last.Name, last.Info.BackingFilename),
			Error:    errcode.From(err),
		}), nil
	}
	if err != nil {
		return nil, err
	}
	key := chainKey(c)
	slot := genSlot{kind, c.Top().ID()}
	if v, ok := f.cfg.Cache.Get(slot); ok && v.(genCacheEntry).key == key {
		c.Close()
		return v.(genCacheEntry).data, v.(genCacheEntry).err
	}
	var data []byte
	switch kind {
	case kindInfo, kindChain:
		// Refuse what is certainly too large before rendering it: a chain
		// of images with 65,536 snapshots each renders to hundreds of
		// megabytes.
		if least := snapshotsJSONAtLeast(c); least > f.cfg.MaxDocument {
			err = errcode.New(errcode.DocumentTooLarge, "the %s of '%s' would be more than %d bytes (its snapshots alone), more than the mount serves (%d)",
				fileName(kind), rel, least, f.cfg.MaxDocument)
		} else {
			data = ctl.InfoJSON(ctl.Info(c, kind == kindChain), kind == kindChain)
		}
	case kindMap, kindMapSVG:
		// One worker run makes both forms of the map; the other is cached
		// for when it is read.
		var m *ctl.MapResult
		if m, err = ctl.MapChain(ctx, o.Sandbox, c, f.cfg.MaxDocument); err == nil {
			forms := map[int][]byte{kindMap: m.JSON(), kindMapSVG: m.SVG()}
			data = forms[kind]
			other := kindMap + kindMapSVG - kind
			f.remember(genSlot{other, slot.id}, key, rel, forms[other], nil)
		}
	case kindCheck:
		var r *ctl.CheckReport
		if r, err = ctl.CheckChain(ctx, o.Sandbox, c); err == nil {
			data = r.JSON()
		}
	}
	c.Close()
	if err != nil && errcode.Of(err) != errcode.DocumentTooLarge {
		return nil, err
	}
	e := f.remember(slot, key, rel, data, err)
	return e.data, e.err
}

// remember caches the document of slot, made from the files key names, and
// returns the entry. A refusal for size is remembered like a document, so
// that reading the file again costs no worker.
func (f *FS) remember(slot genSlot, key, rel string, data []byte, err error) genCacheEntry {
	e := genCacheEntry{key: key, data: data, err: err}
	switch {
	case err != nil:
	case int64(len(data)) > f.cfg.MaxDocument:
		e.data, e.err = nil, errcode.New(errcode.DocumentTooLarge, "the %s of '%s' is %d bytes, more than the mount serves (%d)",
			fileName(slot.kind), rel, len(data), f.cfg.MaxDocument)
	case cap(data) > len(data)+len(data)/8:
		e.data = bytes.Clone(data) // drop the slack the rendering left
	}
	f.cfg.Cache.Add(slot, e, int64(unsafe.Sizeof(slot)+unsafe.Sizeof(e)+uintptr(len(e.key)+cap(e.data)))+errSize(e.err))
	return e
}

// minSnapshotJSON is less than the bytes any snapshot takes in info.json or
// chain.json: seven fields, one a line, indented by twelve spaces or more.
const minSnapshotJSON = 150

// snapshotsJSONAtLeast is a lower bound on the bytes the snapshots of c's
// images take in info.json or chain.json.
func snapshotsJSONAtLeast(c *chainmodel.Chain) int64 {
	var n int64
	for _, im := range c.Images {
		for _, s := range im.Info.Snapshots {
			n += minSnapshotJSON + int64(len(s.Name)+len(s.ID))
		}
	}
	return n
}

// fileName is the name of the image directory's file of kind.
func fileName(kind int) string {
	for _, f := range imageFiles {
		if f.kind == kind {
			return f.name
		}
	}
	return "file"
}

// snapshot is an open generated file: every read is served from the content
// made at open.
type snapshot struct {
	data []byte
}

var _ gofs.FileReader = (*snapshot)(nil)

func (s *snapshot) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(s.data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := off + int64(len(dest))
	if end > int64(len(s.data)) {
		end = int64(len(s.data))
	}
	return fuse.ReadResultData(s.data[off:end]), 0
}
