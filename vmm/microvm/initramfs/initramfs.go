// Package initramfs writes Linux initramfs archives: cpio in the "newc" format
// (magic 070701), which the kernel unpacks into its root file system at boot.
//
// Concatenated archives are unpacked in order, so a small archive appended to
// a larger one can add or replace files; the microvm backend appends each
// run's request that way.
package initramfs

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// Mode bits of a cpio entry (as in stat(2)).
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeCharDev = 0o020000
)

// trailer names the entry that ends an archive.
const trailer = "TRAILER!!!"

// Writer writes one archive. Call Close to write the trailer.
type Writer struct {
	w     io.Writer
	ino   uint32
	n     int64 // bytes written
	err   error
	dirs  map[string]bool
	names map[string]bool
}

// NewWriter returns a Writer that writes an archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, ino: 1, dirs: map[string]bool{".": true, "/": true}, names: map[string]bool{}}
}

// Dir adds a directory. Parent directories are added as needed.
func (w *Writer) Dir(name string, perm uint32) error {
	name = clean(name)
	if w.dirs[name] {
		return w.err
	}
	w.parents(name)
	w.dirs[name] = true
	return w.entry(name, ModeDir|perm&0o7777, 0, nil)
}

// File adds a regular file with the given contents.
func (w *Writer) File(name string, perm uint32, data []byte) error {
	name = clean(name)
	w.parents(name)
	return w.entry(name, ModeRegular|perm&0o7777, 0, data)
}

// CharDev adds a character device node.
func (w *Writer) CharDev(name string, perm uint32, major, minor uint32) error {
	name = clean(name)
	w.parents(name)
	return w.entry(name, ModeCharDev|perm&0o7777, major<<8|minor, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	return w.entry(trailer, 0, 0, nil)
}

func (w *Writer) parents(name string) {
	if dir := path.Dir(name); !w.dirs[dir] {
		w.Dir(dir, 0o755)
	}
}

// clean makes name relative, as the kernel expects it ("dev/console").
func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

func (w *Writer) entry(name string, mode, rdev uint32, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if name == "" {
		w.err = fmt.Errorf("initramfs: empty entry name")
		return w.err
	}
	if name != trailer {
		if w.names[name] {
			w.err = fmt.Errorf("initramfs: %s added twice", name)
			return w.err
		}
		w.names[name] = true
	}
	ino := uint32(0)
	if name != trailer {
		ino = w.ino
		w.ino++
	}
	nlink := uint32(1)
	if mode&ModeDir == ModeDir && mode&ModeRegular != ModeRegular {
		nlink = 2
	}
	// newc header: magic and 13 eight-digit hex fields.
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev>>8, rdev&0xff, len(name)+1, 0)
	w.write([]byte(hdr))
	w.write([]byte(name + "\x00"))
	w.pad()
	w.write(data)
	w.pad()
	return w.err
}

func (w *Writer) write(b []byte) {
	if w.err != nil || len(b) == 0 {
		return
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	w.err = err
}

// pad aligns the archive to 4 bytes.
func (w *Writer) pad() {
	if r := w.n % 4; r != 0 {
		w.write(make([]byte, 4-r))
	}
}
