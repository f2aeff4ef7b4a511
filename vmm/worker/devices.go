package worker

import (
	"os"
	"sync"
)

// devices tracks the length of images the worker sees as block devices (the
// microvm guest): a device cannot grow or shrink, so the host gives it room
// past the file's end and, after the run, cuts the file to the length the
// worker reached (DeviceLengths).
var devices = &deviceLengths{length: map[*os.File]int64{}}

type deviceLengths struct {
	mu     sync.Mutex
	length map[*os.File]int64
}

// track starts tracking f, a block device standing for a file of length n.
func (d *deviceLengths) track(f *os.File, n int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.length[f]; !ok {
		d.length[f] = n
	}
}

func (d *deviceLengths) wrote(f *os.File, end int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n, ok := d.length[f]; ok && end > n {
		d.length[f] = end
	}
}

// truncate sets a tracked device's length and reports whether f is tracked.
// Growing reads back zeros only where the device was never written: the host
// gave it room as a sparse extension of the file.
func (d *deviceLengths) truncate(f *os.File, size int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.length[f]; !ok {
		return false
	}
	d.length[f] = size
	return true
}

// DeviceLengths returns, for each image of the request, the length the worker
// left it at when it is a tracked block device, or -1.
func DeviceLengths() []int64 {
	devices.mu.Lock()
	defer devices.mu.Unlock()
	out := make([]int64, len(files))
	for i, f := range files {
		out[i] = -1
		if n, ok := devices.length[f]; ok {
			out[i] = n
		}
	}
	return out
}
