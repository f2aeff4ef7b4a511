// Package layertest describes small images for tests as strings.
package layertest

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"instarfs/vmm/worker/internal/layer"
)

// BlockSize is the size of one block of an Image.
const BlockSize = 4

// Image is a layer.Image of BlockSize-byte blocks described by a string, a
// character a block: a letter is data (every byte of the block is that
// letter), '0' zero, '.' unallocated, '!' data that cannot be read.
type Image string

// ErrUnreadable is what ReadAt returns for a '!' block.
var ErrUnreadable = errors.New("unreadable block")

func (m Image) VirtualSize() int64 { return int64(len(m)) * BlockSize }

// Kind is what the character c describes.
func Kind(c byte) layer.Kind {
	switch c {
	case '0':
		return layer.Zero
	case '.':
		return layer.Unallocated
	}
	return layer.Data
}

// Extent returns the run at off, merged with following blocks of its kind.
func (m Image) Extent(off int64) (layer.Extent, error) {
	i := off / BlockSize
	k := Kind(m[i])
	e := layer.Extent{Start: off, Length: BlockSize - off%BlockSize, Kind: k, HostOffset: -1}
	for j := i + 1; j < int64(len(m)) && Kind(m[j]) == k; j++ {
		e.Length += BlockSize
	}
	return e, nil
}

// ReadAt reads the blocks as the image alone defines them; it stops at a '!'
// block with ErrUnreadable.
func (m Image) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		c := m[(off+int64(i))/BlockSize]
		if c == '!' {
			return i, ErrUnreadable
		}
		p[i] = 0
		if Kind(c) == layer.Data {
			p[i] = c
		}
	}
	return len(p), nil
}

// OpenFile opens the image file at path with a format package's open
// function, and closes the file when the test ends.
func OpenFile[T any](t testing.TB, path string, open func(r io.ReaderAt, size int64) (T, error)) T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	img, err := open(f, st.Size())
	if err != nil {
		t.Fatalf("Open(%s): %v", filepath.Base(path), err)
	}
	return img
}
