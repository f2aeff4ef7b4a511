package worker

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"instarfs/vmm/worker/internal/layer"
	"instarfs/vmm/worker/internal/qcow2"
)

// copyFileRange is the system call CopyFrom makes; tests replace it to
// see the fallbacks.
var copyFileRange = unix.CopyFileRange

// CopyFrom copies n bytes of src from srcOff into f at dstOff in the kernel
// (copy_file_range: a copy between page caches, or a shared extent on file
// systems that can reflink), and returns how many bytes it copied. It stops
// early, without an error, where the kernel cannot or will not copy: between
// file systems or block devices, on a kernel without the call, past the end
// of src, on a failing disk. The caller writes the rest itself, with a plain
// read and write, which then reports a real failure as such. uncopyable is
// set when no later copy between the two descriptors can succeed either.
//
// Like WriteAt, each call counts as one write for fault injection.
func (f ImageFile) CopyFrom(src *os.File, srcOff, dstOff, n int64) (copied int64, uncopyable bool) {
	for copied < n {
		faults.before()
		roff, woff := srcOff+copied, dstOff+copied
		m, err := copyFileRange(int(src.Fd()), &roff, int(f.Fd()), &woff, int(min(n-copied, 1<<30)), 0)
		if m > 0 {
			copied += int64(m)
			devices.wrote(f.File, dstOff+copied)
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil || m <= 0 {
			// EINVAL between two ranges of one file only says that they
			// overlap; anywhere else it, like the others, says that the
			// kernel copies nothing between these two.
			uncopyable = errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EXDEV) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) && src != f.File
			return copied, uncopyable
		}
	}
	return copied, false
}

// chainSource is the content of one commit step, from guest offset start
// on: what the top's chain shows, and from split on (past the end of the
// top) what the base's own chain shows. Where an image of the chain
// stores a range plainly (qcow2 data clusters, not compressed; raw files),
// WriteTo has the kernel copy it from that image's descriptor; the rest
// (zeros, compressed clusters, other formats, what the kernel declines) is
// read into memory and written.
type chainSource struct {
	imgs         []*opened
	stack        layer.Stack
	base         int // index of the base in imgs and stack
	start, split int64
	buf          *[]byte       // scratch for what is read and written
	nocopy       *bool         // set when the kernel cannot copy into the base
	drop         *cacheDropper // when set, takes what the kernel copied from the top
}

var _ qcow2.Source = (*chainSource)(nil)

// ReadAt fills p with the guest bytes from start+off on.
func (s *chainSource) ReadAt(p []byte, off int64) error {
	g := s.start + off
	end := g + int64(len(p))
	if mid := min(max(s.split, g), end); g < mid {
		if err := s.stack.Fill(p[:mid-g], g); err != nil {
			return err
		}
		p, g = p[mid-g:], mid
	}
	if g < end {
		return s.stack[s.base:].Fill(p, g)
	}
	return nil
}

// WriteTo writes the guest bytes [start+off, start+off+n) into f at host.
func (s *chainSource) WriteTo(f qcow2.File, host, off, n int64) error {
	dst, ok := f.(ImageFile)
	for g, end := s.start+off, s.start+off+n; g < end; {
		m := end - g
		if ok && !*s.nocopy {
			o, from, run, err := s.stored(g, end)
			if err != nil {
				return err
			}
			m = run
			if o != nil {
				copied, uncopyable := dst.CopyFrom(o.file, from, host+g-s.start-off, run)
				if s.drop != nil && o == s.imgs[0] && copied > 0 {
					s.drop.add(from, copied)
				}
				*s.nocopy = *s.nocopy || uncopyable
				g += copied
				if m -= copied; m == 0 {
					continue
				}
			}
		}
		if err := s.plain(f, host+g-s.start-off, g, m); err != nil {
			return err
		}
		g += m
	}
	return nil
}

// stored finds the run of [g, end) that g starts, as one image of the chain
// defines it, and when that image stores it plainly in its file, the image
// and the run's offset in its file.
func (s *chainSource) stored(g, end int64) (o *opened, from, n int64, err error) {
	chain, first := s.stack, 0
	if g >= s.split {
		chain, first = s.stack[s.base:], s.base
	} else {
		end = min(end, s.split)
	}
	if g >= chain.VirtualSize() {
		return nil, 0, end - g, nil // zeros past the chain's end
	}
	depth, e, err := chain.Lookup(g, end)
	if err != nil {
		return nil, 0, 0, err
	}
	img := s.imgs[first+depth]
	if !img.storedPlainly(e) {
		return nil, 0, e.Length, nil
	}
	return img, e.HostOffset, e.Length, nil
}

// plain reads the guest bytes [g, g+n) and writes them into f at host.
func (s *chainSource) plain(f qcow2.File, host, g, n int64) error {
	for n > 0 {
		m := min(n, 8<<20)
		if int64(cap(*s.buf)) < m {
			*s.buf = make([]byte, m)
		}
		p := (*s.buf)[:m]
		if err := s.ReadAt(p, g-s.start); err != nil {
			return err
		}
		if _, err := f.WriteAt(p, host); err != nil {
			return err
		}
		host, g, n = host+m, g+m, n-m
	}
	return nil
}
