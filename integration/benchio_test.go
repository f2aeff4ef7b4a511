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

// ioPlan is what an operation that moves data between a set's files asks of
// the disk, whatever program does it; the benchmark replays it beside the
// operations it times, with the system calls the worker uses for the data
// and nothing else: no process started, no image parsed or checked, no plan.
// Its time is the floor of the operation's on this machine, what is left of
// a ratio to qemu-img when instarfs's own work takes no time.
//
// For commit: each run of the overlay's data copied in place into the base,
// the base made durable, then the overlay's first clusters rewritten and
// made durable, and the overlay cut to its emptied length. For detach: each
// run of the base's data that the overlay did not hide copied to where the
// detached overlay stores it, and the overlay made durable (its new tables,
// a few clusters, left out).
type ioPlan struct {
	src, dst string // the files copied from and into
	copies   []ioCopy
	emptied  int64 // commit: the overlay's length once emptied; 0: no emptying
}

// ioCopy is one run copied: n bytes from src at from into dst at to.
type ioCopy struct{ from, to, n int64 }

// planCommitIO finds the runs to copy from qemu-img's maps of the overlay
// (its own data) and of the base (where that data goes): the runs that lie
// back to back in both files are one copy, as the worker makes them. emptied
// is the overlay's length after a commit.
func planCommitIO(b *testing.B, dir string, emptied int64) ioPlan {
	b.Helper()
	top := qemutest.Map(b, filepath.Join(dir, benchOverlay), "qcow2")
	base := qemutest.Map(b, filepath.Join(dir, benchImage), "qcow2")
	plan := ioPlan{src: benchOverlay, dst: benchImage, emptied: emptied}
	plan.addRuns(b, top, 0, base)
	return plan
}

// planDetachIO finds the runs a detach copies: what the base stores where
// the overlay in dir stores nothing (depth 1 of its map), from where the
// base stores it to where the detached overlay, in detached, does.
func planDetachIO(b *testing.B, dir, detached string) ioPlan {
	b.Helper()
	top := qemutest.Map(b, filepath.Join(dir, benchOverlay), "qcow2")
	after := qemutest.Map(b, filepath.Join(detached, benchOverlay), "qcow2")
	plan := ioPlan{src: benchImage, dst: benchOverlay}
	plan.addRuns(b, top, 1, after)
	return plan
}

// addRuns adds a copy for every run of from's entries at depth: from where
// they lie to where the entries of to (a map covering them) lie, the runs
// that lie back to back in both files joined as the worker joins them.
func (p *ioPlan) addRuns(b *testing.B, from []proto.MapEntry, depth int, to []proto.MapEntry) {
	for _, e := range from {
		if e.Depth != depth || !e.Data || e.Offset == nil {
			continue
		}
		for g, end := e.Start, e.Start+e.Length; g < end; {
			i, _ := slices.BinarySearchFunc(to, g, func(m proto.MapEntry, g int64) int {
				return cmp.Compare(m.Start+m.Length, g+1)
			})
			if i == len(to) || !to[i].Data || to[i].Offset == nil || to[i].Start > g {
				b.Fatalf("no data at guest offset %#x to copy into", g)
			}
			n := min(end, to[i].Start+to[i].Length) - g
			p.add(*e.Offset+g-e.Start, *to[i].Offset+g-to[i].Start, n)
			g += n
		}
	}
}

func (p ioPlan) bytes() (n int64) {
	for _, c := range p.copies {
		n += c.n
	}
	return n
}

func (p *ioPlan) add(from, to, n int64) {
	if k := len(p.copies) - 1; k >= 0 {
		if last := &p.copies[k]; last.from+last.n == from && last.to+last.n == to {
			last.n += n
			return
		}
	}
	p.copies = append(p.copies, ioCopy{from, to, n})
}

// replay does the plan's I/O on the set's files in dir, as the worker does
// it: copy_file_range for each run; every 2 MiB, dst's writeback started
// and, for commit, the overlay's copied pages dropped, on goroutines of
// their own; dst made durable. Then, for commit, the overlay's second
// cluster, then its first, each written and made durable; the overlay cut
// and made durable.
func (p ioPlan) replay(dir string) error {
	// Commit empties its source, the overlay; detach's source is the set's
	// base itself (a hard link), opened read-only.
	commit := p.emptied > 0
	srcMode := os.O_RDONLY
	if commit {
		srcMode = os.O_RDWR
	}
	srcFile, err := os.OpenFile(filepath.Join(dir, p.src), srcMode, 0)
	if err != nil {
		return err
	}
	defer srcFile.Close()
	dstFile, err := os.OpenFile(filepath.Join(dir, p.dst), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer dstFile.Close()
	src, dst := int(srcFile.Fd()), int(dstFile.Fd())

	batches := make(chan []ioCopy, 16)
	var background sync.WaitGroup
	background.Go(func() {
		for batch := range batches {
			_ = unix.SyncFileRange(dst, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			if !commit {
				continue
			}
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
	if err := unix.Fdatasync(dst); err != nil || !commit {
		background.Wait()
		return err
	}
	cluster := make([]byte, benchCluster)
	for _, off := range []int64{benchCluster, 0} {
		if _, err := srcFile.ReadAt(cluster, off); err != nil {
			return err
		}
		if _, err := srcFile.WriteAt(cluster, off); err != nil {
			return err
		}
		if err := unix.Fdatasync(src); err != nil {
			return err
		}
	}
	background.Wait()
	if err := srcFile.Truncate(p.emptied); err != nil {
		return err
	}
	return unix.Fdatasync(src)
}
