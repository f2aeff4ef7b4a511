package worker

import (
	"context"
	"errors"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/planners"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/qcow2"
	"instarfs/vmm/worker/internal/vmdk"
)

// opCommit is qemu-img commit: every range that a layer above the base
// defines is written into the base, read through the top's view of the chain;
// then, unless args.Drop, the top is emptied.
//
// Order of writes (ARCHITECTURE.md, Write ordering): base data, base metadata, fdatasync(base);
// then the top's metadata, fdatasync(top). A crash before the base is durable
// leaves the base with leaked clusters at worst and the chain reading as
// before (the base only receives, in ranges the layers above it cover, what
// the top already shows there); a crash while emptying the top leaves it
// reading through to a base that holds the same data.
func opCommit(_ context.Context, s *session) (any, error) {
	var args proto.CommitArgs
	if err := s.args(&args); err != nil {
		return nil, err
	}
	imgs, err := s.discover(true)
	if err != nil {
		return nil, err
	}
	if err := s.needDrives(imgs, 0); err != nil {
		return nil, err
	}
	if err := s.need(2); err != nil {
		return nil, err
	}
	if args.Base == 0 {
		for i, ref := range s.req.Images[1:] {
			if ref.Writable {
				args.Base = i + 1
			}
		}
	}
	if args.Base < 1 || args.Base >= len(s.req.Images) {
		return nil, errcode.New(errcode.WorkerProtocol, "commit: base index %d outside the chain of %d images", args.Base, len(s.req.Images))
	}
	if args.Cache != "" && !slices.Contains(proto.CacheModes, args.Cache) {
		return nil, errcode.New(errcode.BadArguments, "invalid cache mode %q", args.Cache)
	}
	if !s.req.Images[args.Base].Writable || !args.Drop && !s.req.Images[0].Writable ||
		args.Base >= 2 && !s.req.Images[args.Base-1].Writable {
		return nil, errcode.New(errcode.WorkerProtocol, "commit: the base, the image above it, and the top unless dropped must be writable")
	}
	c := &committer{s: s, args: args, imgs: imgs, base: imgs[args.Base]}
	return c.run()
}

// committer carries one commit.
type committer struct {
	s    *session
	args proto.CommitArgs
	imgs []*opened
	base *opened
	res  proto.CommitResult

	unflushed int64         // bytes written into the base since writeback was last started
	buf       []byte        // what copy steps read and write through memory
	nocopy    bool          // the kernel cannot copy into the base (chainSource)
	drop      *cacheDropper // the top's cache, when emptying it will free its data
	// topUncompressed says the top's refcount check counted no compressed
	// cluster: readableAbove has nothing to read in it.
	topUncompressed bool
}

// writebackEvery is how many bytes commit writes into the base between
// starting their writeback (on a goroutine of its own): the disk then works
// while the copy goes on, and the final fdatasync has less left to wait for.
// The top's pages copied meanwhile are dropped from its cache then too.
const writebackEvery = 2 << 20

func (c *committer) run() (any, error) {
	// Refuse a base or a top that cannot be written or emptied before
	// anything is read or written. The base's checks read the base's file
	// alone: they run on a goroutine of their own beside the top's checks
	// and the plan, and an error of theirs is reported first, as if they had
	// run in turn.
	var t commitTarget
	baseChecked := beside("checking the base", func() (err error) {
		t, err = c.target()
		return err
	})
	p, err := c.prepare()
	if baseErr := <-baseChecked; baseErr != nil {
		return nil, baseErr
	}
	if err != nil {
		return nil, err
	}
	if c.args.Base >= 2 {
		if c.res.IntermediateClustersPreserved, err = c.preserveIntermediate(p.steps, p.stack, t); err != nil {
			return nil, err
		}
	}
	if p.empty != nil && c.imgs[0].format == "qcow2" {
		c.drop = newCacheDropper(c.imgs[0].file) // emptying a qcow2 top frees its data
		defer c.drop.wait()
	}
	if err := c.apply(t, p.steps, p.stack, p.in); err != nil {
		return nil, err
	}
	if err := t.finish(c.args.Cache == "unsafe"); err != nil {
		return nil, err
	}
	if p.empty != nil {
		if err := p.empty(); err != nil {
			return nil, err
		}
	}
	return c.res, nil
}

// beside runs f on a goroutine of its own and delivers its error; a panic
// becomes an INTERNAL error about what.
func beside(what string, f func() error) <-chan error {
	done := make(chan error, 1)
	go func() {
		var err error
		defer func() {
			if r := recover(); r != nil {
				err = errInternal("%s: %v", what, r)
			}
			done <- err
		}()
		err = f()
	}()
	return done
}

// plan is what commit prepares before it writes: the steps, the chain they
// read, and how to empty the top afterwards (nil to leave it).
type plan struct {
	steps []planners.Step
	stack layer.Stack
	in    planners.CommitInput
	empty func() error
}

// prepare checks the images above the base and plans the commit. The plan
// reads the base's block status through the base's image, never the state
// of the base's checks (target), which run beside it.
func (c *committer) prepare() (plan, error) {
	var p plan
	var err error
	var emptiable <-chan error
	if !c.args.Drop {
		if p.empty, emptiable, err = c.topEmptier(); err != nil {
			return p, err
		}
	}
	p, err = c.planSteps(p)
	if emptiable != nil {
		if emptyErr := <-emptiable; emptyErr != nil {
			return p, emptyErr // the top's, reported before the plan's
		}
	}
	return p, err
}

// planSteps checks the images above the base but the top's emptying and
// plans the commit into p.
func (c *committer) planSteps(p plan) (plan, error) {
	var err error
	above := c.imgs[:c.args.Base]
	if c.topUncompressed {
		above = above[1:]
	}
	if err := readableAbove(above); err != nil {
		return p, err
	}
	chain := make([]member, len(c.imgs))
	for i, o := range c.imgs {
		chain[i] = o.member()
	}
	p.stack = stackOf(c.imgs)
	p.in = planners.CommitInput{
		TopSize:  c.imgs[0].img.VirtualSize(),
		BaseSize: c.base.img.VirtualSize(),
	}
	if c.base.format != "raw" {
		p.in.BaseClusterSize = c.base.info.ClusterSize
	}
	if p.in.Segments, err = commitSegments(chain, c.args.Base, planners.Granularity(p.in.BaseClusterSize)); err != nil {
		return p, err
	}
	if p.steps, err = planners.PlanCommit(p.in); err != nil {
		return p, errInternal("%v", err)
	}
	return p, nil
}

// readableAbove decompresses every compressed cluster of the images above the
// base once before the base is touched, so that a corrupt one is found while
// nothing has been written. (Other data is read where it lies; only
// decompression can fail on bytes that are inside the file.)
func readableAbove(imgs []*opened) error {
	var one [1]byte
	for _, o := range imgs {
		size := o.img.VirtualSize()
		for off := int64(0); off < size; {
			e, err := o.img.Extent(off)
			if err != nil {
				return err
			}
			if step := o.info.ClusterSize; e.Compressed && step > 0 {
				for p := e.Start; p < e.End(); p += step {
					if _, err := o.img.ReadAt(one[:], p); err != nil {
						return err
					}
				}
			}
			off = e.End()
		}
	}
	return nil
}

// apply carries out the steps on the base.
func (c *committer) apply(t commitTarget, steps []planners.Step, stack layer.Stack, in planners.CommitInput) error {
	var total, done int64
	for _, st := range steps {
		if st.Kind != planners.StepGrow {
			total += st.Length
		}
	}
	unitSize := in.BaseClusterSize
	if unitSize <= 0 {
		unitSize = planners.Granularity(0)
	}
	lastUnit := int64(-1)
	start := time.Now()
	sync := c.args.Cache == "writethrough" || c.args.Cache == "directsync"
	wb := newWriteback(c.base.file)
	defer wb.stop()
	if c.drop != nil {
		defer c.drop.finish()
	}
	for _, st := range steps {
		var err error
		switch st.Kind {
		case planners.StepGrow:
			err = t.grow(st.Length)
		case planners.StepCopy:
			err = c.copy(t, st, stack)
			if c.unflushed += st.Length; err == nil && c.unflushed >= writebackEvery {
				wb.start()
				if c.drop != nil {
					c.drop.hand()
				}
				c.unflushed = 0
			}
		case planners.StepZero:
			err = t.zero(st.Start, st.Length)
		case planners.StepDiscard:
			err = t.discard(st.Start, st.Length)
		}
		if err != nil {
			return err
		}
		if st.Kind == planners.StepGrow {
			continue
		}
		first, last := st.Start/unitSize, (st.End()-1)/unitSize
		if first == lastUnit {
			first++
		}
		if last >= first {
			c.res.ClustersCommitted += last - first + 1
		}
		lastUnit = last
		c.res.BytesCommitted += st.Length
		done += st.Length
		if sync {
			if err := t.flush(); err != nil {
				return err
			}
		}
		if c.args.Rate > 0 {
			want := time.Duration(float64(done) / float64(c.args.Rate) * float64(time.Second))
			if d := want - time.Since(start); d > 0 {
				time.Sleep(d)
			}
		}
		if total > 0 {
			c.s.out.progress(float64(done) / float64(total))
		}
	}
	return nil
}

// copy writes a copy step into the base, widened to whole allocation units of
// the base so that no partial unit needs copy-on-write: the widened parts read
// through the top's chain view, which there shows what the base itself shows
// (no layer above the base defines them, or they are committed anyway), and
// past the end of the top through the base's own chain. What an image of the
// chain stores plainly goes from its descriptor into the base's in the
// kernel (chainSource).
//
// Reading a range of the base that an earlier step already wrote is safe
// although the base's reader does not see the new metadata: earlier steps
// wrote, outside the dirty ranges, exactly what the reader still returns.
func (c *committer) copy(t commitTarget, st planners.Step, stack layer.Stack) error {
	start, end := t.widen(st.Start, st.End())
	src := &chainSource{
		imgs: c.imgs, stack: stack, base: c.args.Base,
		start: start, split: min(max(stack.VirtualSize(), start), end),
		buf: &c.buf, nocopy: &c.nocopy, drop: c.drop,
	}
	return t.write(start, end-start, src)
}

// commitTarget is the base, written by its format's rules.
type commitTarget interface {
	// widen returns the range of whole allocation units covering [start, end),
	// clipped to the base's size.
	widen(start, end int64) (int64, int64)
	grow(size int64) error
	// write writes the n bytes of src at off.
	write(off, n int64, src *chainSource) error
	// zero makes a range aligned to the base's clusters read as zero, freeing
	// what the base stored there (write-zeroes with MAY_UNMAP).
	zero(off, n int64) error
	discard(off, n int64) error
	// flush makes what was written durable and referenced.
	flush() error
	// finish flushes and completes the base's metadata (the header).
	finish(unsafe bool) error
}

func (c *committer) target() (commitTarget, error) {
	f := ImageFile{c.base.file}
	switch c.base.format {
	case "qcow2":
		if _, err := checkWritable(c.base, "a commit into it"); err != nil {
			return nil, err
		}
		w, err := qcow2.NewWriter(f, c.base.size)
		if err != nil {
			return nil, err
		}
		return &qcow2Target{w: w, h: w.Header(), hasBacking: c.args.Base < len(c.imgs)-1}, nil
	case "vmdk":
		w, err := vmdk.NewWriter(c.base.v, f)
		if err != nil {
			return nil, err
		}
		return &vmdkTarget{w: w, v: c.base.v}, nil
	case "raw":
		if err := writableAsRaw(c.base); err != nil {
			return nil, err
		}
		return &rawTarget{f: f, size: c.base.img.VirtualSize()}, nil
	}
	return nil, errcode.New(errcode.CommitUnsupported, "cannot commit into a %s image", c.base.format)
}

// writableAsRaw refuses to write, as raw, a file that starts with an image
// format's magic. A chain names its backing formats itself, so an untrusted
// overlay can name a qcow2 or vmdk image as its raw backing; qemu-img commit
// then writes guest data over that image's header and tables. Reading such a
// file as raw stays allowed (qemu-img does it too): it shows the file's bytes
// and changes nothing.
func writableAsRaw(o *opened) error {
	if o.magic == "" {
		return nil
	}
	return errcode.New(errcode.RawBaseIsImage,
		"'%s' is named as a raw image but starts with %s magic: writing guest data into it would destroy that image; refusing before writing anything", o.ref.Name, o.magic)
}

func roundUp(v, to int64) int64 { return (v + to - 1) / to * to }

// qcow2Target writes a qcow2 base through the qcow2 Writer.
type qcow2Target struct {
	w          *qcow2.Writer
	h          *qcow2.Header // w's, copied again when it grows
	hasBacking bool
}

func (t *qcow2Target) widen(start, end int64) (int64, int64) {
	h := t.h
	unit := h.SubclusterSize()
	cs := h.ClusterSize()
	size := int64(h.Size)
	// The last unit runs past the virtual size: it is written whole, the
	// part past the end zero, so that a new cluster is covered entirely.
	s, e := start/unit*unit, min(roundUp(end, unit), roundUp(size, unit))
	if unit != cs {
		// A compressed cluster can only be replaced whole.
		if st, _, err := t.w.Lookup(s); err == nil && st == qcow2.SubclusterCompressed {
			s = s / cs * cs
		}
		if st, _, err := t.w.Lookup(e - 1); err == nil && st == qcow2.SubclusterCompressed {
			e = min(roundUp(e, cs), roundUp(size, cs))
		}
	}
	return s, e
}

func (t *qcow2Target) grow(size int64) error {
	err := t.w.Resize(size)
	t.h = t.w.Header()
	return err
}

func (t *qcow2Target) write(off, n int64, src *chainSource) error {
	return t.w.WriteFrom(off, n, src)
}

// zero follows qcow2_co_pwrite_zeroes with MAY_UNMAP: zero clusters (their
// old host clusters freed) in version 3; in version 2, a discard when the base
// has no backing file and explicit zeros when it has one.
func (t *qcow2Target) zero(off, n int64) error {
	if t.h.Version < 3 && !t.hasBacking {
		return t.w.Unmap(off, n)
	}
	return t.w.WriteZeroes(off, n, layer.MayUnmap)
}

func (t *qcow2Target) discard(off, n int64) error {
	if !t.hasBacking {
		return t.w.Unmap(off, n)
	}
	return t.w.WriteZeroes(off, n, layer.MayUnmap)
}

func (t *qcow2Target) flush() error { return t.w.Flush() }

func (t *qcow2Target) finish(bool) error { return t.w.Finish() }

// vmdkTarget writes a vmdk base through the vmdk Writer.
type vmdkTarget struct {
	w *vmdk.Writer
	v *vmdk.Image
}

func (t *vmdkTarget) widen(start, end int64) (int64, int64) {
	g := t.v.GrainSize()
	return start / g * g, min((end+g-1)/g*g, t.v.VirtualSize())
}

func (t *vmdkTarget) grow(size int64) error {
	return errcode.New(errcode.CommitUnsupported, "the vmdk base (%d bytes) is smaller than the image committed into it (%d bytes), and vmdk images cannot grow", t.v.VirtualSize(), size)
}

func (t *vmdkTarget) write(off, n int64, src *chainSource) error {
	p := grow(*src.buf, n)
	*src.buf = p
	if err := src.ReadAt(p, 0); err != nil {
		return err
	}
	return t.w.WriteData(off, p)
}

func (t *vmdkTarget) zero(off, n int64) error    { return t.w.WriteZeroes(off, n, layer.MayUnmap) }
func (t *vmdkTarget) discard(off, n int64) error { return t.w.WriteZeroes(off, n, layer.MayUnmap) }
func (t *vmdkTarget) flush() error               { return t.w.Flush() }
func (t *vmdkTarget) finish(bool) error          { return t.w.Finish() }

// rawTarget writes a raw base: guest offset is file offset.
type rawTarget struct {
	f    ImageFile
	size int64
}

func (t *rawTarget) widen(start, end int64) (int64, int64) { return start, end }

func (t *rawTarget) grow(size int64) error {
	if err := t.f.Truncate(size); err != nil {
		return errcode.New(errcode.WriteFailed, "growing the raw base to %d bytes: %v", size, err)
	}
	t.size = size
	return nil
}

func (t *rawTarget) write(off, n int64, src *chainSource) error {
	err := src.WriteTo(t.f, off, 0, n)
	if e := (*errcode.Error)(nil); err != nil && !errors.As(err, &e) {
		return errcode.New(errcode.WriteFailed, "writing the raw base at %d: %v", off, err)
	}
	return err
}

func (t *rawTarget) writeZeros(off int64, p []byte) error {
	if _, err := t.f.WriteAt(p, off); err != nil {
		return errcode.New(errcode.WriteFailed, "writing the raw base at %d: %v", off, err)
	}
	return nil
}

// zero punches a hole, as qemu's file driver does for write-zeroes with
// MAY_UNMAP; where the file system cannot, zeros are written.
func (t *rawTarget) zero(off, n int64) error {
	err := t.f.PunchHole(off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return errcode.New(errcode.WriteFailed, "punching a hole in the raw base at %d: %v", off, err)
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		m := min(n, int64(len(zero)))
		if err := t.writeZeros(off, zero[:m]); err != nil {
			return err
		}
		off += m
		n -= m
	}
	return nil
}

func (t *rawTarget) discard(off, n int64) error { return t.zero(off, n) }

func (t *rawTarget) flush() error {
	if err := t.f.Datasync(); err != nil {
		return errcode.New(errcode.WriteFailed, "syncing the raw base: %v", err)
	}
	return nil
}

func (t *rawTarget) finish(unsafe bool) error {
	if unsafe {
		return nil
	}
	return t.flush()
}

// topEmptier prepares emptying the top after the base is durable, and
// returns the function that does it: qcow2 as qemu's bdrv_make_empty does;
// vmdk (which qemu leaves as it is) by clearing every grain table entry, with
// its parentCID made the base's CID when the base is a vmdk whose CID it does
// not match. A streamOptimized vmdk top is left as it is, as qemu leaves it.
//
// For a qcow2 top, its writer is opened, and what emptying would meet only
// after it had started (its L2 tables read and counted, the header it will
// write encoded) checked, on a goroutine of its own beside the plan;
// emptiable delivers the error.
// The emptying function must not run before that has been received.
func (c *committer) topEmptier() (empty func() error, emptiable <-chan error, _ error) {
	top := c.imgs[0]
	f := ImageFile{top.file}
	switch top.format {
	case "qcow2":
		rep, err := checkWritable(top, "a commit empties it")
		if err != nil {
			return nil, nil, err
		}
		c.topUncompressed = rep.CompressedClusters == 0
		var w *qcow2.Writer
		checked := beside("checking the top's emptying", func() (err error) {
			if w, err = qcow2.NewWriter(f, top.size); err == nil {
				err = w.CheckEmptiable()
			}
			return err
		})
		return func() error {
			r, err := w.MakeEmpty(c.s.lastCut(0, f))
			c.res.OverlayClustersCleared = r.Cleared
			return err
		}, checked, nil
	case "vmdk":
		if top.v.Compressed() {
			return nil, nil, nil
		}
		w, err := vmdk.NewWriter(top.v, f)
		if err != nil {
			return nil, nil, err
		}
		return func() error {
			if c.args.Base == 1 && c.base.v != nil && top.v.ParentCID() != c.base.v.CID() {
				cid := c.base.v.CID()
				if err := w.UpdateDescriptor(func(d *vmdk.Descriptor) error { return d.SetParentCID(cid) }); err != nil {
					return err
				}
			}
			freed, n, err := w.Empty()
			if err != nil {
				return err
			}
			c.res.OverlayClustersCleared = n
			for _, g := range freed {
				if err := f.PunchHole(g, top.v.GrainSize()); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
					return errcode.New(errcode.WriteFailed, "punching out a freed grain of the top: %v", err)
				}
			}
			if err := f.Datasync(); err != nil {
				return errcode.New(errcode.WriteFailed, "syncing the top: %v", err)
			}
			return nil
		}, nil, nil
	}
	return nil, nil, nil
}

// preserveIntermediate keeps the image just above the base (with -b, an
// intermediate image) showing what it showed before the commit: before the
// base changes, every unit of it that it does not define itself, in a range
// the steps change, and where the base's content will differ, receives the
// base's old content. qemu-img does not do this, and leaves the intermediate
// images showing a mix of old and committed data.
//
// Its own writes are made durable before the base is touched, so a crash
// leaves it showing what it showed before either way.
func (c *committer) preserveIntermediate(steps []planners.Step, stack layer.Stack, t commitTarget) (int64, error) {
	mid := c.imgs[c.args.Base-1]
	f := ImageFile{mid.file}
	diff := &differ{img: mid.img, old: stack[c.args.Base:]}
	switch mid.format {
	case "qcow2":
		if _, err := checkWritable(mid, "a commit writes into it"); err != nil {
			return 0, err
		}
		w, err := qcow2.NewWriter(f, mid.size)
		if err != nil {
			return 0, err
		}
		diff.w, diff.unit, diff.whole = w, w.Header().SubclusterSize(), true
	case "vmdk":
		w, err := vmdk.NewWriter(mid.v, f)
		if err != nil {
			return 0, err
		}
		diff.w, diff.unit = w, mid.v.GrainSize()
	default:
		return 0, errcode.New(errcode.CommitUnsupported, "cannot keep the %s image '%s' valid", mid.format, mid.ref.Name)
	}
	midSize := mid.img.VirtualSize()
	next := int64(0) // units below next are done
	for _, st := range steps {
		if st.Kind == planners.StepGrow {
			continue
		}
		// What the image reads through afterwards: the committed data
		// where the step copies, zeros where it zeroes or discards.
		start, end := st.Start, st.End()
		var after layer.Stack
		if st.Kind == planners.StepCopy {
			start, end = t.widen(start, end)
			after = stack
		}
		start, end = max(start/diff.unit*diff.unit, next), min(end, midSize)
		if start >= end {
			continue
		}
		if err := diff.copy(start, end, after); err != nil {
			return 0, err
		}
		next = roundUp(end, diff.unit)
	}
	return diff.units, diff.w.Finish()
}
