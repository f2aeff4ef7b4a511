package worker

import (
	"bytes"

	"instarfs/vmm/worker/internal/layer"
)

// A differ keeps an image reading as it did while its backing chain changes
// from old to another: wherever the image does not define a unit itself and
// the two chains read differently, it writes the old chain's bytes into it.
// A safe vmdk rebase runs it on the top; a commit below an intermediate image
// runs it on the image just above the base.
type differ struct {
	img  layer.Image  // the image as it was before any write
	w    layer.Writer // writes into the same image
	old  layer.Stack
	unit int64 // the image's allocation unit
	// whole writes a last unit cut by the image's size whole, zero past the
	// size: a qcow2 writer allocates whole units.
	whole    bool
	progress func(float64) // after each write, the fraction of the image done; may be nil

	oldBuf, newBuf []byte
	units, bytes   int64 // units written, and the image's bytes in them
}

// copy handles the units of the image from the one holding start to the
// last that starts before end (at most the image's size), the image to read
// through new afterwards. Where both chains read as zero by their metadata
// nothing is read.
//
// Before its first write it looks up every extent of the image once, so that
// a table that cannot be read fails the operation while nothing is written.
func (d *differ) copy(start, end int64, new layer.Stack) error {
	size := d.img.VirtualSize()
	if d.oldBuf == nil {
		for off := int64(0); off < size; {
			e, err := d.extent(off)
			if err != nil {
				return err
			}
			off = e.End()
		}
		d.oldBuf, d.newBuf = make([]byte, d.unit), make([]byte, d.unit)
	}
	for u := start / d.unit * d.unit; u < end; {
		e, err := d.extent(u)
		if err != nil {
			return err
		}
		if e.Kind != layer.Unallocated {
			u = roundUp(e.End(), d.unit)
			continue
		}
		if err := d.copyUnit(u, min(d.unit, size-u), new); err != nil {
			return err
		}
		u += d.unit
	}
	return nil
}

// extent is the image's extent at off, which must make progress.
func (d *differ) extent(off int64) (layer.Extent, error) {
	e, err := d.img.Extent(off)
	if err == nil && e.End() <= off {
		err = errInternal("extent at guest offset %d made no progress", off)
	}
	return e, err
}

// copyUnit handles the unit at u, n bytes of the image.
func (d *differ) copyUnit(u, n int64, new layer.Stack) error {
	o, err := d.old.ExtentBefore(u, u+n)
	if err != nil {
		return err
	}
	w, err := new.ExtentBefore(u, u+n)
	if err != nil {
		return err
	}
	if o.Kind == layer.Zero && o.Length == n && w.Kind == layer.Zero && w.Length == n {
		return nil
	}
	oldBuf, newBuf := d.oldBuf[:n], d.newBuf[:n]
	if err := d.old.Fill(oldBuf, u); err != nil {
		return err
	}
	if err := new.Fill(newBuf, u); err != nil {
		return err
	}
	if bytes.Equal(oldBuf, newBuf) {
		return nil
	}
	if d.whole && n < d.unit {
		clear(d.oldBuf[n:])
		oldBuf = d.oldBuf
	}
	if err := d.w.WriteData(u, oldBuf); err != nil {
		return err
	}
	d.units++
	d.bytes += n
	if d.progress != nil {
		d.progress(float64(u+n) / float64(d.img.VirtualSize()))
	}
	return nil
}
