package worker

import (
	"bytes"
	"context"
	"sync"

	"instarfs/errcode"
	"instarfs/planners"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/qcow2"
)

// sectorSize is the unit qemu-img 7.2 compares buffers in.
const sectorSize = 512

// opRebase changes the backing file of the overlay (image 0), in safe mode
// first copying into it whatever reads differently through the new backing
// chain than through the old one.
func opRebase(ctx context.Context, s *session) (any, error) {
	if err := s.need(1); err != nil {
		return nil, err
	}
	var args proto.RebaseArgs
	if err := s.args(&args); err != nil {
		return nil, err
	}
	if !s.req.Images[0].Writable {
		return nil, errcode.New(errcode.WorkerProtocol, "rebase: the overlay was not handed over writable")
	}
	c, err := s.rebaseImages(&args)
	if err != nil {
		return nil, err
	}
	if !args.Unsafe {
		if err := s.needDrives(c.all, 0); err != nil {
			return nil, err
		}
	}
	top := c.all[0]

	format := ""
	if args.Backing != "" {
		format = args.BackingFormat
		if len(c.new) > 0 && (format == "" || format == c.new[0].format) {
			format = c.new[0].format
		}
		if format == "" {
			return nil, errcode.New(errcode.BackingFormatRequired, "the format of the new backing file '%s' must be given (-F) when it cannot be opened", args.Backing)
		}
		if !proto.Format(format).Valid() {
			return nil, errcode.New(errcode.UnknownFormat, "unknown backing format '%s'", format)
		}
	}

	switch top.format {
	case "qcow2":
	case "vmdk":
		return rebaseVmdk(s, args, c)
	default:
		return nil, errcode.New(errcode.RebaseUnsupported, "'%s' is a %s image, which has no backing file to change", top.ref.Name, top.format)
	}

	w, err := qcow2.NewWriter(ImageFile{s.files[0]}, top.size)
	if err != nil {
		return nil, err
	}
	// Check the new header first: a name that does not fit fails before
	// anything is written.
	if err := w.SetBacking(args.Backing, format); err != nil {
		return nil, err
	}
	res := &proto.RebaseResult{Mode: "unsafe", BackingFormat: format}
	if !args.Unsafe {
		res.Mode = "safe"
		if err := reclaimLeaks(top, w); err != nil {
			return nil, err
		}
		r := &rebaser{
			ctx: ctx, s: s, w: w, top: top.q,
			old: stackOf(c.old), new: stackOf(c.new),
			oldImgs: c.old, newImgs: c.new,
			v3: top.q.Header().Version >= 3,
		}
		if c.newInOld >= 0 {
			r.above = r.old[:c.newInOld]
		}
		if err := r.run(); err != nil {
			return nil, err
		}
		res.ClustersCopied, res.BytesCopied = r.units, r.bytes
	}
	if err := w.Finish(); err != nil {
		return nil, err
	}
	s.out.progress(1)
	return res, nil
}

// reclaimLeaks checks the overlay's refcounts before a safe rebase allocates
// in it: an overlay with refcount errors is refused, and leaked clusters (what
// an interrupted rebase leaves) are reclaimed, so that a rebase run again after
// a crash places its clusters exactly where an uninterrupted one would.
func reclaimLeaks(top *opened, w *qcow2.Writer) error {
	rep, err := checkWritable(top, "a safe rebase")
	if err != nil {
		return err
	}
	if len(rep.LeakedClusters) == 0 || len(rep.LeakedClusters) >= qcow2.MaxLeakRecords {
		return nil // nothing to reclaim, or too many to list: leave them
	}
	return w.ReclaimLeaks(rep.LeakedClusters)
}

// checkWritable refuses a qcow2 image whose refcounts are wrong, before
// anything is written to it: allocating by wrong refcounts would overwrite
// live data or metadata. Leaks are harmless and allowed.
func checkWritable(o *opened, before string) (*qcow2.CheckReport, error) {
	rep, err := qcow2.Check(o.file, o.size)
	if err != nil {
		return nil, err
	}
	if rep.Corruptions > 0 || rep.CheckErrors > 0 {
		return nil, errcode.New(errcode.Qcow2Corrupt, "'%s' has %d refcount errors; repair it (check -r) before %s", o.ref.Name, rep.Corruptions+rep.CheckErrors, before)
	}
	return rep, nil
}

// rebaser runs the safe mode of one rebase.
type rebaser struct {
	ctx              context.Context
	s                *session
	w                *qcow2.Writer
	top              *qcow2.Image
	old, new         layer.Stack
	oldImgs, newImgs []*opened   // the images of old and new
	above            layer.Stack // old chain layers above the new backing (in-chain case)
	v3               bool

	size, unit, oldSize int64
	lastEnd             int64 // end of the last unit written as data
	units, bytes        int64 // data units written and their bytes

	wb        *writeback // starts the overlay's writeback (see writebackEvery)
	unflushed int64      // bytes written since the writeback was last started
	maps      *mapper    // shows what the chains store plainly, for the compare
	copyBuf   []byte     // what writes from the old chain read through memory
	nocopy    bool       // the kernel cannot copy into the overlay (chainSource)
}

func (r *rebaser) run() error {
	r.size = r.top.VirtualSize()
	r.unit = r.top.SubclusterSize()
	in := planners.RebaseInput{Size: r.size, Unit: r.unit}
	in.OldSize, in.NewSize = r.old.VirtualSize(), r.new.VirtualSize()
	r.oldSize = in.OldSize
	// The walks of the chains' metadata are independent (images are safe
	// for concurrent use), and on scattered data each takes milliseconds:
	// they run side by side, and the first error in this order is the one
	// reported, as if they had run one after the other.
	var walks sync.WaitGroup
	errs := make([]error, 4)
	walks.Go(func() { in.Unallocated, errs[0] = r.unallocated() })
	walks.Go(func() { in.OldZero, errs[1] = zeroSpans(r.old, min(r.size, in.OldSize)) })
	walks.Go(func() { in.NewZero, errs[2] = zeroSpans(r.new, min(r.size, in.NewSize)) })
	if r.above != nil {
		walks.Go(func() { in.Unchanged, errs[3] = unchangedSpans(r.above, r.size) })
	}
	walks.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	steps, err := planners.PlanRebase(in)
	if err != nil {
		return err
	}
	r.wb = newWriteback(r.s.files[0])
	defer r.wb.stop()
	r.maps = newMapper()
	defer r.maps.close()
	return r.execute(steps)
}

// chunk is one step's data: the old chain over the step's whole units and
// the new chain over the step.
//
// Where both chains read as zero by their metadata alone, nothing is read,
// cleared or compared: skip lists those ranges, and oldBuf holds stale bytes
// there until a write needs them (see fillSkipped).
//
// When the old chain is read, the step's compared bytes are spans (oldV,
// and newV where the new chain is read; it reads as zero otherwise): what an
// image stores plainly is shown in place through the rebaser's mappings, not
// copied, and what differs is written from the old chain's files, which the
// kernel copies (see write). Units' parts outside the step are always in
// oldBuf.
type chunk struct {
	st               planners.RebaseStep
	aStart, unit     int64
	oldBuf, newBuf   []byte
	skip             []planners.Span
	filled           int  // skip[:filled] are already cleared in oldBuf
	viewed           bool // the step's bytes are spans, not oldBuf and newBuf
	oldV, newV       []span
	oldHeld, newHeld []hold        // what oldV and newV show of the mapper's windows
	pieces           []layer.Piece // the step's pieces (kept for their memory)
	oldRd, newRd     vecReader     // (kept for their memory)
	oldReq, newReq   []fillReq     // (kept for their memory)
	units            []verdict     // by unit from aStart: what compareUnits found
	err              error
}

// verdict is what a compare found of one unit, if anything yet.
type verdict uint8

const (
	unknown verdict = iota
	equal
	differs
)

// release gives back the windows c holds; its spans are gone with them.
func (c *chunk) release(m *mapper) {
	for _, held := range []*[]hold{&c.oldHeld, &c.newHeld} {
		for _, h := range *held {
			m.put(h)
		}
		clear(*held)
		*held = (*held)[:0]
	}
	c.oldV, c.newV = c.oldV[:0], c.newV[:0]
}

// execute runs the steps in order, in three stages that overlap, each on
// its own goroutine and one step ahead of the next: reading (block status
// and where each side's bytes are), comparing whole units, and writing on
// this goroutine, where the writes stay in order.
//
// The other stages are gone when execute returns, and every chunk has
// released its windows: the mappings may then go.
func (r *rebaser) execute(steps []planners.RebaseStep) error {
	const depth = 3 // one chunk per stage
	free := make(chan *chunk, depth)
	chunks := make([]*chunk, depth)
	for i := range chunks {
		chunks[i] = &chunk{unit: r.unit}
		free <- chunks[i]
	}
	// The channels hold every chunk: no send blocks.
	read := make(chan *chunk, depth)
	ready := make(chan *chunk, depth)
	stop := make(chan struct{})
	var stages sync.WaitGroup
	defer func() {
		close(stop)
		stages.Wait()
		for _, c := range chunks {
			c.release(r.maps)
		}
	}()
	stages.Go(func() {
		defer close(read)
		for _, st := range steps {
			var c *chunk
			select {
			case c = <-free:
			case <-stop:
				return
			}
			r.read(c, st)
			failed := c.err != nil // c is the next stage's once sent
			read <- c
			if failed {
				return
			}
		}
	})
	stages.Go(func() {
		defer close(ready)
		for c := range read {
			if c.err == nil {
				c.err = r.maps.read(func() error { c.compareUnits(); return nil })
			}
			failed := c.err != nil
			ready <- c
			if failed {
				return
			}
		}
	})
	for c := range ready {
		if err := r.ctx.Err(); err != nil {
			return errcode.New(errcode.Cancelled, "rebase cancelled: %v", err)
		}
		if c.err != nil {
			return c.err
		}
		if err := r.maps.read(func() error { return r.step(c) }); err != nil {
			return err
		}
		c.release(r.maps)
		r.s.out.progress(float64(c.st.Off+c.st.Len) / float64(r.size) * 0.99)
		free <- c
	}
	return nil
}

// unallocated lists the overlay's unallocated runs, split at L2 table
// boundaries as qemu's block status splits them.
func (r *rebaser) unallocated() ([]planners.Span, error) {
	h := r.top.Header()
	span := int64(h.L2Entries()) << h.ClusterBits
	var out []planners.Span
	for off := int64(0); off < r.size; {
		e, err := r.top.Extent(off)
		if err != nil {
			return nil, err
		}
		end := e.End()
		if e.Kind == layer.Unallocated {
			for p := off; p < end; {
				q := min(end, (p/span+1)*span)
				out = append(out, planners.Span{Start: p, Length: q - p})
				p = q
			}
		}
		off = end
	}
	return out, nil
}

// zeroSpans lists the ranges of [0, size) where chain reads as zero by its
// metadata alone.
func zeroSpans(chain layer.Stack, size int64) ([]planners.Span, error) {
	var out []planners.Span
	for off := int64(0); off < size; {
		e, err := chain.ExtentBefore(off, size)
		if err != nil {
			return nil, err
		}
		if e.Kind == layer.Zero {
			out = appendSpan(out, off, e.Length)
		}
		off = e.End()
	}
	return out, nil
}

// appendSpan adds [off, off+n), which starts at or after the last span's
// start, to spans, merged into the last span when they touch or overlap.
func appendSpan(spans []planners.Span, off, n int64) []planners.Span {
	if k := len(spans) - 1; k >= 0 && off <= spans[k].End() {
		spans[k].Length = max(spans[k].End(), off+n) - spans[k].Start
		return spans
	}
	return append(spans, planners.Span{Start: off, Length: n})
}

// unchangedSpans lists the ranges of [0, size) that no layer of above
// allocates: there the old chain reads through to the new backing.
func unchangedSpans(above layer.Stack, size int64) ([]planners.Span, error) {
	var out []planners.Span
	for off := int64(0); off < size; {
		allocated, n, err := above.Allocated(off, size)
		if err != nil {
			return nil, err
		}
		if !allocated {
			out = appendSpan(out, off, n)
		}
		off += n
	}
	return out, nil
}

// grow returns b resized to n bytes, reallocating when it is too small;
// chunks keep their buffers from step to step.
func grow(b []byte, n int64) []byte {
	if int64(cap(b)) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// readOld reads the old chain's content of the units [aStart, aEnd) that
// cover step st (units may stick out of the step: a write covers them whole).
func (r *rebaser) readOld(st planners.RebaseStep, oldBuf []byte, aStart int64) error {
	end := st.Off + st.Len
	if st.ReadOld {
		return r.old.Fill(oldBuf, aStart)
	}
	clear(oldBuf)
	if err := r.old.Fill(oldBuf[:st.Off-aStart], aStart); err != nil {
		return err
	}
	return r.old.Fill(oldBuf[end-aStart:], end)
}

// read fills c with the data of step st, reading the old and the new chain at
// once (the layers are safe for concurrent use).
func (r *rebaser) read(c *chunk, st planners.RebaseStep) {
	end := st.Off + st.Len
	c.st = st
	c.aStart = st.Off &^ (r.unit - 1)
	aEnd := (end + r.unit - 1) &^ (r.unit - 1)
	c.oldBuf = grow(c.oldBuf, aEnd-c.aStart)
	c.newBuf = grow(c.newBuf, st.Len)
	c.skip, c.filled, c.viewed = c.skip[:0], 0, false
	if st.PastOldEOF {
		c.err = r.readWhole(c, st)
		return
	}
	// A side that is not read counts as zero throughout.
	old, new := r.old, r.new
	if !st.ReadOld {
		old = nil
	}
	if !st.ReadNew {
		new = nil
	}
	ps, err := layer.Compare(old, new, st.Off, end, c.pieces)
	c.pieces = ps
	if err != nil {
		c.err = err
		return
	}
	// Skipping needs sector-aligned ranges (a raw backing file's end may
	// not be): otherwise both sides are cleared and compared.
	aligned := st.Off%sectorSize == 0
	for _, p := range ps {
		if p.OldZero && p.NewZero {
			if p.Start%sectorSize != 0 || p.End()%sectorSize != 0 && p.End() != end {
				aligned = false
			}
			c.skip = append(c.skip, planners.Span{Start: p.Start, Length: p.Length})
		}
	}
	if !aligned {
		for i := range ps {
			if ps[i].OldZero && ps[i].NewZero {
				ps[i].NewZero = false // read (as zeros) and compared as usual
			}
		}
		c.skip = c.skip[:0]
	}
	// The old side read: the compare reads both sides in place.
	view := st.ReadOld
	c.viewed = view
	var newErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.newReq = c.newReq[:0]
		if view && !st.ReadNew {
			return // the new side reads as zero throughout
		}
		for _, p := range ps {
			b := c.newBuf[p.Start-st.Off : p.End()-st.Off]
			switch {
			case p.OldZero && p.NewZero:
			case p.NewZero && !view:
				clear(b)
			default:
				c.newReq = append(c.newReq, fillReq{b, p.Start})
			}
		}
		c.newRd.chain, c.newRd.imgs = r.new, r.newImgs
		if view {
			c.newV, newErr = c.newRd.view(c.newReq, r.maps, &c.newHeld, c.newV)
		} else {
			newErr = c.newRd.fill(c.newReq)
		}
	}()
	oldErr := r.readOldPieces(c, ps, view)
	<-done
	c.err = oldErr
	if c.err == nil {
		c.err = newErr
	}
}

// readOldPieces reads the old chain into c.oldBuf: the units' parts outside
// the step, and the step's pieces that are not skipped, or with view, shows
// those pieces as c.oldV.
func (r *rebaser) readOldPieces(c *chunk, ps []layer.Piece, view bool) error {
	st, aStart := c.st, c.aStart
	end := st.Off + st.Len
	if err := r.old.Fill(c.oldBuf[:st.Off-aStart], aStart); err != nil {
		return err
	}
	if err := r.old.Fill(c.oldBuf[end-aStart:], end); err != nil {
		return err
	}
	c.oldReq = c.oldReq[:0]
	for _, p := range ps {
		b := c.oldBuf[p.Start-aStart : p.End()-aStart]
		switch {
		case p.OldZero && p.NewZero:
		case p.OldZero && !view:
			clear(b)
		default:
			c.oldReq = append(c.oldReq, fillReq{b, p.Start})
		}
	}
	c.oldRd.chain, c.oldRd.imgs = r.old, r.oldImgs
	if view {
		var err error
		c.oldV, err = c.oldRd.view(c.oldReq, r.maps, &c.oldHeld, c.oldV)
		return err
	}
	return c.oldRd.fill(c.oldReq)
}

// readWhole reads a step past the old backing's end the plain way: both
// buffers whole, nothing skipped.
func (r *rebaser) readWhole(c *chunk, st planners.RebaseStep) error {
	end := st.Off + st.Len
	var newErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		if st.ReadNew {
			newErr = r.new.Fill(c.newBuf, st.Off)
		} else {
			clear(c.newBuf)
		}
	}()
	oldErr := r.readOld(st, c.oldBuf, c.aStart)
	<-done
	if oldErr != nil {
		return oldErr
	}
	if newErr != nil {
		return newErr
	}
	// Past the old backing's end the old side reads zero.
	clear(c.oldBuf[max(st.Off, r.oldSize)-c.aStart : end-c.aStart])
	return nil
}

// zeroRun is what a chain that reads as zero is compared with.
var zeroRun [64 << 10]byte

// fillSkipped clears oldBuf where the skipped ranges meet [a, b), before
// that is written: the old chain reads zero there. Writes come in ascending
// order.
func (c *chunk) fillSkipped(a, b int64) {
	for i := c.filled; i < len(c.skip) && c.skip[i].Start < b; i++ {
		s := c.skip[i]
		if lo, hi := max(s.Start, a), min(s.End(), b); lo < hi {
			clear(c.oldBuf[lo-c.aStart : hi-c.aStart])
		}
		if s.End() <= b {
			c.filled = i + 1
		}
	}
}

// step compares one planned range (its whole units compared already, see
// compareUnits) and writes the differences.
func (r *rebaser) step(c *chunk) error {
	st := c.st
	end := st.Off + st.Len

	// Runs of differing 512-byte sectors; equal units are skipped whole, and
	// so are the skipped ranges (equal by block status). Those start and end
	// on sector boundaries, so a run ends where one starts, as it would if
	// the range had been compared.
	//
	// Before the old backing's end, a run's write covers the whole units it
	// touches, so which units are written is all that matters of the runs:
	// those holding a differing sector. There a differing unit that lies
	// whole in the range joins the run at once, without finding which of
	// its sectors differ (on data unlike the other side, every sector does,
	// and a compare per sector was a third of a detach's CPU time). Past the
	// old end, where a run starts decides whether its head unit keeps the
	// old data (see write), and runs are found sector by sector.
	byUnit := !st.PastOldEOF
	eq := c.equalUnit
	skip := c.skip
	for pos := st.Off; pos < end; {
		for len(skip) > 0 && skip[0].End() <= pos {
			skip = skip[1:]
		}
		lim := end
		if len(skip) > 0 {
			if skip[0].Start <= pos {
				pos = skip[0].End()
				continue
			}
			lim = skip[0].Start
		}
		u := pos &^ (r.unit - 1)
		ue := min(u+r.unit, end)
		whole := pos == max(u, st.Off) && ue <= lim
		if whole && eq(pos, ue) {
			pos = ue
			continue
		}
		re := ue
		if !whole || !byUnit {
			re = min(pos+sectorSize, lim)
			if eq(pos, re) {
				pos = re
				continue
			}
		}
		for re < lim {
			next := min(re+sectorSize, lim)
			if byUnit && re&(r.unit-1) == 0 {
				next = min(re+r.unit, lim)
			}
			if eq(re, next) {
				break
			}
			re = next
		}
		if err := r.write(c, pos, re); err != nil {
			return err
		}
		pos = re
	}
	return nil
}

// equal reports whether the old and the new chain read alike over [a, b),
// inside the step and outside its skipped ranges.
func (c *chunk) equal(a, b int64) bool {
	st := c.st
	if !c.viewed {
		return bytes.Equal(c.oldBuf[a-c.aStart:b-c.aStart], c.newBuf[a-st.Off:b-st.Off])
	}
	if !st.ReadNew && nonZeroHead(c.oldV, a, b) {
		return false
	}
	for a < b {
		o := spanAt(c.oldV, a, b)
		var n []byte
		if st.ReadNew {
			n = spanAt(c.newV, a, b)
		} else {
			n = zeroRun[:min(b-a, int64(len(zeroRun)))]
		}
		k := min(len(o), len(n))
		if !bytes.Equal(o[:k], n[:k]) {
			return false
		}
		a += int64(k)
	}
	return true
}

// compareUnits finds the verdict of every unit of the step that no skipped
// range touches, over the unit's part inside the step, for every step: on a
// stage of its own, so that comparing a chunk overlaps writing the one
// before. It reads bytes shown in place: the caller runs it inside the
// mapper's read.
func (c *chunk) compareUnits() {
	st, unit := c.st, c.unit
	end := st.Off + st.Len
	n := int((end - c.aStart + unit - 1) / unit)
	if cap(c.units) < n {
		c.units = make([]verdict, n)
	}
	c.units = c.units[:n]
	skip := c.skip
	for i := range c.units {
		u := c.aStart + int64(i)*unit
		a, b := max(u, st.Off), min(u+unit, end)
		for len(skip) > 0 && skip[0].End() <= a {
			skip = skip[1:]
		}
		switch {
		case len(skip) > 0 && skip[0].Start < b:
			c.units[i] = unknown
		case c.equal(a, b):
			c.units[i] = equal
		default:
			c.units[i] = differs
		}
	}
}

// equalUnit is equal, answered from compareUnits' verdict where [a, b) is
// a unit's part inside the step.
func (c *chunk) equalUnit(a, b int64) bool {
	if i := (a - c.aStart) / c.unit; i < int64(len(c.units)) && c.units[i] != unknown {
		u := c.aStart + i*c.unit
		if a == max(u, c.st.Off) && b == min(u+c.unit, c.st.Off+c.st.Len) {
			return c.units[i] == equal
		}
	}
	return c.equal(a, b)
}

// write handles one run [rs, re) of differing sectors, as qemu-img 7.2's
// pwrite (old data, widened to whole units by copy-on-write) or, past the old
// backing's end, write_zeroes.
func (r *rebaser) write(c *chunk, rs, re int64) error {
	st, oldBuf, aStart := c.st, c.oldBuf, c.aStart
	ws := rs &^ (r.unit - 1)
	we := (re + r.unit - 1) &^ (r.unit - 1)
	data := func(a, b int64) error {
		a = max(a, r.lastEnd)
		if a >= b {
			return nil
		}
		if c.viewed {
			// The old chain's bytes, copied by the kernel from the files
			// that store them plainly.
			src := &chainSource{imgs: r.oldImgs, stack: r.old, start: a, split: a, buf: &r.copyBuf, nocopy: &r.nocopy}
			if err := r.w.WriteFrom(a, b-a, src); err != nil {
				return err
			}
		} else {
			c.fillSkipped(a, b)
			if err := r.w.WriteData(a, oldBuf[a-aStart:b-aStart]); err != nil {
				return err
			}
		}
		if r.unflushed += b - a; r.unflushed >= writebackEvery {
			r.wb.start()
			r.unflushed = 0
		}
		r.lastEnd = b
		r.units += (b - a) / r.unit
		r.bytes += b - a
		return nil
	}
	if !st.PastOldEOF {
		return data(ws, we)
	}
	// Past the old end. A head unit that straddles the old end and was not
	// written yet keeps the old data unless that reads as zero (qemu checks
	// that the rest of the unit reads as zero before it sets zero flags).
	if ws < rs {
		if ws < r.lastEnd {
			ws += r.unit // already holds the old data, which is zero here
		} else if ws < r.oldSize && (!r.v3 || !allZero(oldBuf[ws-aStart:rs-aStart])) {
			if err := data(ws, ws+r.unit); err != nil {
				return err
			}
			ws += r.unit
		}
	}
	if ws >= we {
		return nil
	}
	if r.v3 {
		return r.w.WriteZeroes(ws, we-ws, 0)
	}
	// Version 2 has no zero flag: explicit zeros, written as qemu's
	// fallback writes them (head unit, body, tail unit).
	head := ws
	if rs > ws {
		head = ws + r.unit
		if err := data(ws, head); err != nil {
			return err
		}
	}
	body := we
	if re < we && we-r.unit >= head {
		body = we - r.unit
	}
	if err := data(head, body); err != nil {
		return err
	}
	return data(body, we)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
