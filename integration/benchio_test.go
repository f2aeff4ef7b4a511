package integration

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/internal/qemutest"
	"instarfs/proto"
)

// commitIO is what committing a set's overlay into its base asks of the
// disk, whatever program does it: each run of the overlay's data copied in
// place into the base, the base made durable, then the overlay's first
// clusters rewritten and made durable, and the overlay cut to its emptied
// length. The benchmark replays it beside the commits it times, with the
// system calls the worker uses for the data and nothing else: no process
// started, no image parsed or checked, no plan. Its time is the floor of
// commit's on this machine, what is left of a ratio to qemu-img when
// instarfs's own work takes no time.
type commitIO struct {
	copies  []ioCopy
	emptied int64 // the overlay's length once emptied
}

// ioCopy is one run copied: n bytes from the overlay at from into the base
// at to.
type ioCopy struct{ from, to, n int64 }

// planCommitIO finds the runs to copy from qemu-img's maps of the overlay
// (its own data) and of the base (where that data goes): the runs that lie
// back to back in both files are one copy, as the worker makes them. emptied
// is the overlay's length after a commit.
func planCommitIO(b *testing.B, dir string, emptied int64) commitIO {
	b.Helper()
	top := qemutest.Map(b, filepath.Join(dir, benchOverlay), "qcow2")
	base := qemutest.Map(b, filepath.Join(dir, benchImage), "qcow2")
	plan := commitIO{emptied: emptied}
	for _, e := range top {
		if e.Depth != 0 || !e.Data || e.Offset == nil {
			continue
		}
		for g, end := e.Start, e.Start+e.Length; g < end; {
			i, _ := slices.BinarySearchFunc(base, g, func(m proto.MapEntry, g int64) int {
				return cmp.Compare(m.Start+m.Length, g+1)
			})
			if i == len(base) || !base[i].Data || base[i].Offset == nil || base[i].Start > g {
				b.Fatalf("the base stores nothing at guest offset %#x, which its overlay rewrites", g)
			}
			n := min(end, base[i].Start+base[i].Length) - g
			plan.add(*e.Offset+g-e.Start, *base[i].Offset+g-base[i].Start, n)
			g += n
		}
	}
	return plan
}

func (p commitIO) bytes() (n int64) {
	for _, c := range p.copies {
		n += c.n
	}
	return n
}

func (p *commitIO) add(from, to, n int64) {
	if k := len(p.copies) - 1; k >= 0 {
		if last := &p.copies[k]; last.from+last.n == from && last.to+last.n == to {
			last.n += n
			return
		}
	}
	p.copies = append(p.copies, ioCopy{from, to, n})
}

// replay does the plan's I/O on the set's files in dir, as the worker does
// it: copy_file_range for each run; every 2 MiB, the base's writeback
// started and the overlay's copied pages dropped, on goroutines of their
// own; the base made durable; the overlay's second cluster, then its first,
// each written and made durable; the overlay cut and made durable.
func (p commitIO) replay(dir string) error {
	top, err := os.OpenFile(filepath.Join(dir, benchOverlay), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer top.Close()
	base, err := os.OpenFile(filepath.Join(dir, benchImage), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer base.Close()
	src, dst := int(top.Fd()), int(base.Fd())

	batches := make(chan []ioCopy, 16)
	var background sync.WaitGroup
	background.Go(func() {
		for batch := range batches {
			_ = unix.SyncFileRange(dst, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			for _, c := range batch {
				_ = unix.Fadvise(src, c.from, c.n, unix.FADV_DONTNEED)
			}
		}
	})
	var batch []ioCopy
	var unflushed int64
	for _, c := range p.copies {
		for done := int64(0); done < c.n; {
			from, to := c.from+done, c.to+done
			n, err := unix.CopyFileRange(src, &from, dst, &to, int(c.n-done), 0)
			if err != nil || n == 0 {
				close(batches)
				background.Wait()
				return fmt.Errorf("copying %d bytes from %#x to %#x: %d, %v", c.n, c.from, c.to, n, err)
			}
			done += int64(n)
		}
		batch = append(batch, c)
		if unflushed += c.n; unflushed >= 2<<20 {
			batches <- batch
			batch, unflushed = nil, 0
		}
	}
	batches <- batch
	close(batches)
	if err := unix.Fdatasync(dst); err != nil {
		return err
	}
	cluster := make([]byte, benchCluster)
	for _, off := range []int64{benchCluster, 0} {
		if _, err := top.ReadAt(cluster, off); err != nil {
			return err
		}
		if _, err := top.WriteAt(cluster, off); err != nil {
			return err
		}
		if err := unix.Fdatasync(src); err != nil {
			return err
		}
	}
	background.Wait()
	if err := top.Truncate(p.emptied); err != nil {
		return err
	}
	return unix.Fdatasync(src)
}
