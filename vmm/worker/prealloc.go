package worker

import (
	"os"
	"syscall"

	"instarfs/vmm/worker/internal/qcow2"
)

// metadataPreallocated is qemu's heuristic for a qcow2 image made with
// preallocation=metadata: its refcounts claim clearly more clusters than the
// file occupies on disk. Only for such images does qemu's block status look at
// holes in the image file, so map must do the same to agree with it.
func metadataPreallocated(q *qcow2.Image, f *os.File) bool {
	st, err := f.Stat()
	if err != nil {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || st.Mode()&os.ModeDevice != 0 {
		// A block device (the microvm guest) has no allocation to compare.
		return false
	}
	cs := q.ClusterSize()
	real := sys.Blocks * 512 / cs
	threshold := max(real*10/9, real+2)
	end := (st.Size() + cs - 1) / cs
	table, err := q.RefcountTable()
	if err != nil {
		return false
	}
	perBlock := q.Header().RefcountEntries()
	var count int64
	for i := int64(0); i < end && count < threshold; i += perBlock {
		ti := i / perBlock
		if ti >= int64(len(table)) {
			break
		}
		off := int64(table[ti] & qcow2.RefcountTableOffsetMask)
		if off == 0 {
			continue
		}
		b, err := q.ReadRefcountBlock(off)
		if err != nil {
			return false
		}
		for j := 0; j < b.Len() && i+int64(j) < end && count < threshold; j++ {
			if b.Get(j) != 0 {
				count++
			}
		}
	}
	return count >= threshold
}
