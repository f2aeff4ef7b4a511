// Package diskview serves the disk view: an image's guest-visible content,
// the flattened chain, read through a confined worker that stays up while the
// chain is read (a vmm.Session running proto.OpDisk).
//
// A Pool keeps one open chain per chain identity, shared by every reader of
// it, with QEMU's shared read locks held while it is open; and at most
// MaxWorkers live workers, started at the first read, ended after Idle
// without a read, and the least recently used one first when a new one is
// needed. A handle whose worker was ended starts another at its next read.
//
// The host opens the chain (ctl.Opener.OpenChain probes each member)
// and hands every descriptor to the worker; nothing here reads image bytes.
package diskview

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// Defaults of a Pool.
const (
	DefaultMaxWorkers = 8
	DefaultIdle       = 5 * time.Second
	// DefaultLife is how long one worker serves before the pool replaces it
	// with a fresh one, which keeps the worker's CPU-time limit meaningful.
	DefaultLife = 10 * time.Minute
)

// Config says how a Pool opens chains and how many workers it keeps.
type Config struct {
	Opener     *ctl.Opener
	MaxWorkers int           // live workers; 0 means DefaultMaxWorkers
	Idle       time.Duration // 0 means DefaultIdle
	Life       time.Duration // 0 means DefaultLife
	// Busy, when set, says why a file may not be read now (a job runs on
	// it: CHAIN_BUSY), or nil: a chain with a busy member is not opened.
	Busy func(chainmodel.FileID) error
	Log  logrus.FieldLogger
}

// Pool is the set of open chains of one mount. It is safe for concurrent use.
type Pool struct {
	cfg Config

	mu      sync.Mutex
	chains  map[string]*entry // open chains, by identity
	reaping bool              // the idle reaper runs
	closed  bool
}

// entry is one open chain and its worker.
type entry struct {
	key     string
	rel     string
	ids     []chainmodel.FileID
	chain   *chainmodel.Chain
	size    int64
	refs    int       // open handles
	disk    *vmm.Disk // the live worker, or nil
	born    time.Time // when disk started
	used    time.Time // the last read, open or close
	start   chan struct{}
	revoked error // set when the chain was taken away from its readers
	ra      readahead
	runs    runMap
}

// New returns a pool.
func New(cfg Config) *Pool {
	if cfg.MaxWorkers <= 0 {
		cfg.MaxWorkers = DefaultMaxWorkers
	}
	if cfg.Idle <= 0 {
		cfg.Idle = DefaultIdle
	}
	if cfg.Life <= 0 {
		cfg.Life = DefaultLife
	}
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	return &Pool{cfg: cfg, chains: map[string]*entry{}}
}

// Handle is one open of a disk view.
type Handle struct {
	p *Pool
	e *entry

	mu     sync.Mutex
	closed bool
}

// Open opens the chain of the image at path (format empty to detect it;
// want, when set, the identity the top must have) and returns a handle on
// its disk view. The chain is shared with every other
// handle open on the same chain identity: every member's device, inode, size
// and times.
func (p *Pool) Open(ctx context.Context, path, format string, want *chainmodel.FileID) (*Handle, error) {
	c, err := p.cfg.Opener.OpenChain(ctx, path, ctl.OpenOptions{Format: format, Want: want})
	if err != nil {
		return nil, err
	}
	var key strings.Builder
	ids := make([]chainmodel.FileID, len(c.Images))
	for i, im := range c.Images {
		st := im.Stat
		fmt.Fprintf(&key, "%s:%s/", chainmodel.StateOf(&st), im.Info.Format)
		ids[i] = chainmodel.IDOf(&st)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, errcode.New(errcode.Cancelled, "the mount is closing")
	}
	// Checked under mu: Revoke, which a job calls once it is busy, then
	// either sees this entry or this open sees the job.
	for _, id := range ids {
		if p.cfg.Busy == nil {
			break
		}
		if err := p.cfg.Busy(id); err != nil {
			c.Close()
			return nil, err
		}
	}
	e := p.chains[key.String()]
	if e != nil {
		c.Close() // the entry holds its own open of the same files
	} else {
		e = &entry{key: key.String(), rel: path, ids: ids, chain: c, size: c.Top().Info.VirtualSize}
		p.chains[e.key] = e
	}
	e.refs++
	e.used = time.Now()
	p.reapLocked()
	return &Handle{p: p, e: e}, nil
}

// Size is the disk's size: the top image's virtual size.
func (h *Handle) Size() int64 { return h.e.size }

// Blocks is the space the chain's files take, in 512-byte units.
func (h *Handle) Blocks() int64 {
	var n int64
	for _, im := range h.e.chain.Images {
		n += im.Stat.Blocks
	}
	return n
}

// Key identifies the chain's state when it was opened: two handles with the
// same key read the same bytes.
func (h *Handle) Key() string { return h.e.key }

// ReadAt fills p with the disk's bytes at off, which must lie within it.
func (h *Handle) ReadAt(ctx context.Context, p []byte, off int64) error {
	return h.e.ra.readAt(ctx, h, p, off)
}

func (p *Pool) revokedErr(e *entry) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return e.revoked
}

// read reads p at off from the worker, or answers zeros for a hole.
func (h *Handle) read(ctx context.Context, p []byte, off int64) error {
	h.e.runs.load(h)
	if h.e.runs.hole(off, len(p)) {
		clear(p)
		return nil
	}
	return h.call(ctx, func(d *vmm.Disk) error { return d.ReadAt(ctx, p, off) })
}

// Seek is lseek's SEEK_DATA (data true) and SEEK_HOLE: the first offset at or
// after off that is data, or a hole. The end of the disk counts as a hole;
// SEEK_DATA past the last data returns ok false (ENXIO).
func (h *Handle) Seek(ctx context.Context, off int64, data bool) (int64, bool, error) {
	h.e.runs.load(h)
	for off < h.e.size {
		if isData, end, ok := h.e.runs.run(off); ok {
			if isData == data {
				return off, true, nil
			}
			off = end
			continue
		}
		var run proto.DiskRun
		err := h.call(ctx, func(d *vmm.Disk) (err error) {
			run, err = d.Extent(ctx, off)
			return err
		})
		if err != nil {
			return 0, false, err
		}
		if run.Data == data {
			return off, true, nil
		}
		off += run.Length
		if err := ctx.Err(); err != nil {
			return 0, false, errcode.New(errcode.Cancelled, "seek interrupted")
		}
	}
	if data {
		return 0, false, nil
	}
	return h.e.size, true, nil
}

// call runs fn with the chain's live worker, starting one if needed. A
// worker that failed is dropped, so the next call starts another.
func (h *Handle) call(ctx context.Context, fn func(*vmm.Disk) error) error {
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return errcode.New(errcode.Internal, "read on a closed disk handle")
	}
	d, err := h.p.worker(h.e)
	if err != nil {
		return err
	}
	err = fn(d)
	if err != nil && d.S.Err() != nil {
		h.p.drop(h.e, d)
		h.p.cfg.Log.WithFields(logrus.Fields{"image": h.e.rel, "error": err}).Warn("disk worker failed")
	}
	return err
}

// Close ends the handle. The chain stays open for the idle time, so that the
// next open finds its worker still up.
func (h *Handle) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.mu.Unlock()
	h.p.mu.Lock()
	h.e.refs--
	h.e.used = time.Now()
	h.p.mu.Unlock()
}

// worker returns e's live worker, starting it (and ending the least recently
// used other one when MaxWorkers are live) if needed.
func (p *Pool) worker(e *entry) (*vmm.Disk, error) {
	p.mu.Lock()
	for {
		if e.revoked != nil {
			p.mu.Unlock()
			return nil, e.revoked
		}
		if e.disk != nil && time.Since(e.born) >= p.cfg.Life {
			go e.disk.S.Close() // retired: a fresh worker takes over
			e.disk = nil
		}
		if e.disk != nil {
			e.used = time.Now()
			d := e.disk
			p.mu.Unlock()
			return d, nil
		}
		if e.start == nil {
			break
		}
		start := e.start
		p.mu.Unlock()
		<-start
		p.mu.Lock()
	}
	e.start = make(chan struct{})
	var evicted []*vmm.Disk
	for p.liveLocked() >= p.cfg.MaxWorkers {
		lru := p.lruLocked(e)
		if lru == nil {
			break
		}
		evicted = append(evicted, lru.disk)
		lru.disk = nil
	}
	chain, size := e.chain, e.size
	p.mu.Unlock()
	for _, d := range evicted {
		d.S.Close()
	}

	d, err := p.startWorker(chain, size)

	p.mu.Lock()
	close(e.start)
	e.start = nil
	if err == nil {
		if e.revoked != nil {
			err = e.revoked
			go d.S.Close()
		} else {
			e.disk, e.born, e.used = d, time.Now(), time.Now()
		}
	}
	p.mu.Unlock()
	if err != nil {
		p.cfg.Log.WithFields(logrus.Fields{"image": e.rel, "error": err}).Warn("disk worker did not start")
		return nil, err
	}
	return d, nil
}

func (p *Pool) startWorker(c *chainmodel.Chain, size int64) (*vmm.Disk, error) {
	// Not the reader's ctx: the worker is shared, and its start is bounded.
	s, err := p.cfg.Opener.Sandbox.Start(context.Background(), vmm.Job{
		Request: proto.Request{Op: proto.OpDisk, Images: c.Refs()},
		Files:   c.Files(),
		Timeout: p.cfg.Life + vmm.CallTimeout + time.Minute,
		Shared:  proto.MaxDiskRead,
	})
	if err != nil {
		return nil, err
	}
	return vmm.OpenDisk(s, size)
}

// liveLocked counts the live workers and the ones being started.
func (p *Pool) liveLocked() int {
	n := 0
	for _, e := range p.chains {
		if e.disk != nil || e.start != nil {
			n++
		}
	}
	return n
}

// lruLocked is the entry other than not whose live worker was used least
// recently, or nil.
func (p *Pool) lruLocked(not *entry) *entry {
	var lru *entry
	for _, e := range p.chains {
		if e != not && e.disk != nil && (lru == nil || e.used.Before(lru.used)) {
			lru = e
		}
	}
	return lru
}

// drop ends e's worker d after it failed, unless it was replaced already.
func (p *Pool) drop(e *entry, d *vmm.Disk) {
	p.mu.Lock()
	if e.disk == d {
		e.disk = nil
	}
	p.mu.Unlock()
	d.S.Close()
}

// Workers is the number of live workers.
func (p *Pool) Workers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.liveLocked()
}

// Revoke takes every open chain that holds one of ids away from its readers:
// its worker is ended, its files and locks are released, and its handles'
// reads fail with CHAIN_CHANGED from then on. A job calls it before it opens
// the chain to change it. It returns the paths of the images whose disk was
// open, so their cached content can be dropped.
func (p *Pool) Revoke(ids []chainmodel.FileID, why string) []string {
	p.mu.Lock()
	var gone []*entry
	for key, e := range p.chains {
		if overlaps(e.ids, ids) {
			e.revoked = errcode.New(errcode.ChainChanged, "the chain of '%s' was changed by %s while its disk was open; open disk again", e.rel, why)
			gone = append(gone, e)
			delete(p.chains, key)
		}
	}
	p.mu.Unlock()
	var rels []string
	for _, e := range gone {
		p.release(e)
		rels = append(rels, e.rel)
		if e.refs > 0 {
			p.cfg.Log.WithFields(logrus.Fields{"image": e.rel, "operation": why}).Warn("an open disk's chain is changing; its readers get EIO until they open it again")
		}
	}
	return rels
}

func overlaps(a, b []chainmodel.FileID) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}

// release ends e's worker (waiting for a read in progress) and closes its
// chain. e must no longer be in p.chains.
func (p *Pool) release(e *entry) {
	p.mu.Lock()
	d := e.disk
	e.disk = nil
	start := e.start
	p.mu.Unlock()
	if start != nil {
		<-start // a worker being started sees e.revoked and ends itself
	}
	if d != nil {
		d.S.Close()
	}
	e.chain.Close()
}

// reapLocked makes sure the idle reaper runs while chains are open.
func (p *Pool) reapLocked() {
	if p.reaping || p.closed {
		return
	}
	p.reaping = true
	go p.reap()
}

// reap ends workers idle for longer than Idle, and closes chains that no
// handle has open and that have been idle as long.
func (p *Pool) reap() {
	tick := time.NewTicker(max(p.cfg.Idle/4, 10*time.Millisecond))
	defer tick.Stop()
	for range tick.C {
		p.mu.Lock()
		var idle []*vmm.Disk
		var gone []*entry
		now := time.Now()
		for key, e := range p.chains {
			if e.start != nil || now.Sub(e.used) < p.cfg.Idle {
				continue
			}
			if e.disk != nil {
				idle = append(idle, e.disk)
				e.disk = nil
			}
			e.ra.drop()
			if e.refs == 0 {
				gone = append(gone, e)
				delete(p.chains, key)
			}
		}
		done := len(p.chains) == 0 || p.closed
		if done {
			p.reaping = false
		}
		p.mu.Unlock()
		for _, d := range idle {
			d.S.Close()
		}
		for _, e := range gone {
			p.release(e)
		}
		if done {
			return
		}
	}
}

// Close ends every worker and closes every chain; later opens fail.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	var all []*entry
	for key, e := range p.chains {
		e.revoked = errcode.New(errcode.Cancelled, "the mount is closing")
		all = append(all, e)
		delete(p.chains, key)
	}
	p.mu.Unlock()
	for _, e := range all {
		p.release(e)
	}
}
