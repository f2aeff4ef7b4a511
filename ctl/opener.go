package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/lru"
	"instarfs/proto"
	"instarfs/vmm"
)

// DefaultMaxDocument is the largest generated document (info.json,
// chain.json, map.json, check.json) a mount serves unless told otherwise.
const DefaultMaxDocument = 32 << 20

// DefaultCacheBytes is the budget of an Opener's probe cache when it is given
// none, and the mount's default budget for all its caches.
const DefaultCacheBytes = 256 << 20

// Opener opens images and discovers their chains through a sandboxed worker.
type Opener struct {
	Sandbox vmm.Sandbox
	Policy  chainmodel.Policy
	// Cache keeps probe results by file state. It may be shared with other
	// caches under one budget; nil means a cache of DefaultCacheBytes of the
	// Opener's own.
	Cache *lru.Cache[any, any]

	mu sync.Mutex
}

func (o *Opener) cache() *lru.Cache[any, any] {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.Cache == nil {
		o.Cache = lru.New[any, any](DefaultCacheBytes)
	}
	return o.Cache
}

// probeKey identifies a probe: a result is reused only while the file is
// unchanged.
type probeKey struct {
	state     chainmodel.FileState
	format    string
	detectRaw bool
}

// Probe asks a worker what f holds. format may be empty to detect it.
func (o *Opener) Probe(ctx context.Context, f *os.File, name, format string, detectRaw bool) (proto.Info, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return proto.Info{}, st, errcode.New(errcode.ReadFailed, "stat %s: %v", name, err)
	}
	im := &chainmodel.Image{Name: name, File: f, Stat: st}
	if info, ok := o.cached(im, format, detectRaw); ok {
		return info, st, nil
	}
	var info proto.Info
	args, _ := json.Marshal(proto.ProbeArgs{DetectRaw: detectRaw})
	res, err := o.Sandbox.Run(ctx, vmm.Job{
		Request: proto.Request{Op: proto.OpProbe, Images: []proto.ImageRef{{Name: filepath.Base(name), Format: format}}, Args: args},
		Files:   []*os.File{f},
	})
	if err != nil {
		return proto.Info{}, st, err
	}
	if err := DecodeResult(res, &info); err != nil {
		return proto.Info{}, st, err
	}
	if err := chainmodel.CheckInfo(info, format, detectRaw); err != nil {
		return proto.Info{}, st, err
	}
	im.Info = info
	o.remember(im, format, detectRaw)
	return info, st, nil
}

// cached returns the description of im in the probe cache, if its file is
// unchanged since a worker gave it.
func (o *Opener) cached(im *chainmodel.Image, format string, detectRaw bool) (proto.Info, bool) {
	v, ok := o.cache().Get(probeKey{chainmodel.StateOf(&im.Stat), format, detectRaw})
	if !ok {
		return proto.Info{}, false
	}
	return v.(proto.Info), true
}

// remember keeps im's description in the probe cache, for the state of its
// file when it was opened.
func (o *Opener) remember(im *chainmodel.Image, format string, detectRaw bool) {
	key := probeKey{chainmodel.StateOf(&im.Stat), format, detectRaw}
	o.cache().Add(key, im.Info, int64(unsafe.Sizeof(key))+infoSize(im.Info))
}

// infoSize estimates the bytes info keeps alive: its own fields, its strings,
// and every snapshot and vmdk extent (65,536 snapshots make a probe result of
// several megabytes).
func infoSize(info proto.Info) int64 {
	n := int64(unsafe.Sizeof(info)) + int64(len(info.Format)+len(info.BackingFilename)+len(info.BackingFilenameFormat))
	n += int64(cap(info.Snapshots)) * int64(unsafe.Sizeof(proto.Snapshot{}))
	for _, s := range info.Snapshots {
		n += int64(len(s.Name) + len(s.ID))
		if s.ICount != nil {
			n += 8
		}
	}
	if fs := info.FormatSpecific; fs != nil {
		n += int64(unsafe.Sizeof(*fs)) + int64(len(fs.Type))
		switch d := fs.Data.(type) {
		case *proto.Qcow2Specific:
			n += int64(unsafe.Sizeof(*d)) + int64(len(d.Compat)+len(d.CompressionType)) + 3*8
		case *proto.VmdkSpecific:
			n += int64(unsafe.Sizeof(*d)) + int64(len(d.CreateType)) + int64(cap(d.Extents))*int64(unsafe.Sizeof(proto.VmdkExtent{}))
			for _, e := range d.Extents {
				n += int64(len(e.Filename) + len(e.Format))
			}
		}
	}
	return n
}

// DecodeResult decodes a worker's result document strictly into v.
func DecodeResult(res json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(res))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errcode.New(errcode.WorkerProtocol, "decoding worker result: %v", err)
	}
	return nil
}

// OpenOptions say how to open a chain.
type OpenOptions struct {
	Format    string // the top's format; empty to detect (raw only with a partition table)
	Writable  bool   // open the top read-write
	NoBacking bool   // open the top alone
	// Want, when set, is the identity the top must have (the mount's node for
	// it); another file at path is IMAGE_CHANGED.
	Want *chainmodel.FileID
	// Partial: when a backing file cannot be opened, return the images
	// opened so far (still open) together with the error.
	Partial bool
	// ForceShare opens every image as qemu-img -U does: read-only, without
	// taking or testing QEMU's locks, so that an image a running VM holds can
	// be inspected. Not with Writable.
	ForceShare bool
	// Reservation, when set, takes each member of the chain below the top
	// as it is opened (brokered runs and the probe cache's chains only).
	Reservation chainmodel.Reservation
}

// OpenChain opens the image at path (beneath an allowed root) and, unless
// opts.NoBacking, every backing image below it, each checked by the policy
// before it is opened, and describes them: from the probe cache when every
// member is unchanged since a worker described it, else through one worker
// that asks the host for each backing file.
func (o *Opener) OpenChain(ctx context.Context, path string, opts OpenOptions) (*chainmodel.Chain, error) {
	if c := o.cachedChain(path, opts); c != nil {
		return c, nil
	}
	c, _, err := o.runChain(ctx, path, chainJob{
		op:   proto.OpProbe,
		args: proto.ProbeArgs{DetectRaw: opts.Format == "", Chain: !opts.NoBacking},
		opts: opts,
		infos: func(res json.RawMessage) ([]proto.Info, error, error) {
			var ci proto.ChainInfo
			if err := DecodeResult(res, &ci); err != nil {
				return nil, nil, err
			}
			if ci.Error != nil {
				return ci.Images, ci.Error, nil
			}
			return ci.Images, nil, nil
		},
	})
	return c, err
}

// lockUnlessShared takes QEMU's locks on f as opts ask: none with ForceShare.
func lockUnlessShared(f *os.File, name string, opts OpenOptions) error {
	if opts.ForceShare {
		return nil
	}
	return chainmodel.LockImage(f, name, opts.Writable)
}
