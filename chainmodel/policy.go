package chainmodel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
)

// Root is a directory files may be opened beneath. It is held open from the
// start, so that nothing done later to its path changes which directory it is.
type Root struct {
	Path string // absolute and cleaned, as named
	fd   int    // O_PATH|O_DIRECTORY
}

// Policy says which files instarfs opens: regular files below one of Roots,
// reached without leaving it through "..", a symlink or a magic link. Every
// open of an image, top or backing, on the command line and in the mount, is
// Policy.Open.
type Policy struct {
	Roots []*Root
	// Dir is the absolute directory relative paths are taken against (Place,
	// and so Locate with a relative referrer); empty means the process's
	// working directory, as on the command line.
	Dir string
}

// NewPolicy opens the given directories as the policy's roots.
func NewPolicy(dirs ...string) (Policy, error) {
	var p Policy
	for _, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			p.Close()
			return Policy{}, errcode.New(errcode.BadArguments, "allowed directory %q: %v", d, err)
		}
		fd, err := unix.Open(abs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			p.Close()
			return Policy{}, errcode.New(errcode.NotFound, "could not open directory '%s': %v", d, err)
		}
		p.Roots = append(p.Roots, &Root{Path: abs, fd: fd})
	}
	return p, nil
}

// Close releases the roots' descriptors.
func (p Policy) Close() {
	for _, r := range p.Roots {
		if r.fd >= 0 {
			unix.Close(r.fd)
			r.fd = -1
		}
	}
}

// Loc names a file beneath a root.
type Loc struct {
	Root *Root
	Rel  string // cleaned and relative (a trailing slash kept); "." is the root itself
}

// Path is the host path loc names, for messages and lexical resolution only:
// nothing is opened by it.
func (l Loc) Path() string { return filepath.Join(l.Root.Path, l.Rel) }

// FileID identifies a file by device and inode, whatever its name.
type FileID struct {
	Dev, Ino uint64
}

// IDOf is the identity of the file st describes.
func IDOf(st *unix.Stat_t) FileID { return FileID{Dev: st.Dev, Ino: st.Ino} }

// FileState identifies a file's content as fstat sees it: an answer cached
// about the file is reused only while its state is unchanged.
type FileState struct {
	ID           FileID
	Size         int64
	Mtime, Ctime unix.Timespec
}

// StateOf is the state of the file st describes.
func StateOf(st *unix.Stat_t) FileState {
	return FileState{IDOf(st), st.Size, st.Mtim, st.Ctim}
}

// String renders s for a cache key: device, inode, size and the two times.
func (s FileState) String() string {
	return fmt.Sprintf("%d:%d:%d:%d.%d:%d.%d", s.ID.Dev, s.ID.Ino, s.Size, s.Mtime.Sec, s.Mtime.Nsec, s.Ctime.Sec, s.Ctime.Nsec)
}

// hasProtocolPrefix reports whether name starts as qemu would take for a
// protocol ("nbd:", "http:", "file:", "json:"): a letter, then letters, digits,
// '+', '.' or '-', then a colon (so before any slash).
func hasProtocolPrefix(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '.' || c == '-'):
		case i > 0 && c == ':':
			return true
		default:
			return false
		}
	}
	return false
}

// MaxBackingName is the longest backing name qcow2 allows.
const MaxBackingName = 1023

// Locate checks a backing reference made by an image in directory referrerDir
// and returns where it lies. It opens nothing: the check is lexical, and the
// kernel enforces the rest when Open resolves the name beneath the root.
func (p Policy) Locate(referrerDir, name string) (Loc, error) {
	switch {
	case name == "":
		return Loc{}, errcode.New(errcode.BadArguments, "empty backing file name")
	case strings.HasPrefix(name, "json:"):
		return Loc{}, errcode.New(errcode.BackingProtocol, "backing file %q is a json: specification, which is refused", name)
	case hasProtocolPrefix(name):
		return Loc{}, errcode.New(errcode.BackingProtocol, "backing file %q names a protocol, which is refused", name)
	case len(name) > MaxBackingName:
		return Loc{}, errcode.New(errcode.BackingNameTooLong, "backing file name is %d bytes long (at most %d)", len(name), MaxBackingName)
	case strings.IndexByte(name, 0) >= 0:
		return Loc{}, errcode.New(errcode.BadArguments, "backing file name %q contains a NUL byte", name)
	}
	abs := name
	if !filepath.IsAbs(name) {
		abs = filepath.Join(referrerDir, name)
	}
	if loc, ok := p.Place(abs); ok {
		return loc, nil
	}
	return Loc{}, errcode.New(errcode.BackingPathOutsideRoot, "backing file %q is outside the image directory", name)
}

// Place returns the root path lies beneath (path is absolute, or relative to
// p.Dir), lexically. A trailing slash is kept: it makes the open fail on a
// file, as it does for any program.
func (p Policy) Place(path string) (Loc, bool) {
	abs, err := p.abs(path)
	if err != nil {
		return Loc{}, false
	}
	for _, r := range p.Roots {
		if rel, err := filepath.Rel(r.Path, abs); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			if strings.HasSuffix(path, "/") && rel != "." {
				rel += "/"
			}
			return Loc{Root: r, Rel: rel}, true
		}
	}
	return Loc{}, false
}

// abs is path made absolute against p.Dir, and cleaned.
func (p Policy) abs(path string) (string, error) {
	if p.Dir == "" || filepath.IsAbs(path) {
		return filepath.Abs(path)
	}
	return filepath.Join(p.Dir, path), nil
}

// Admit checks a backing name before it is written into an image in
// referrerDir: instarfs never writes a name it would refuse to open. A name
// that is allowed but does not exist (yet) is admitted.
func (p Policy) Admit(referrerDir, name string) error {
	loc, err := p.Locate(referrerDir, name)
	if err != nil {
		return err
	}
	_, err = p.Stat(loc, How{Backing: true, Name: name})
	if err != nil && errcode.Of(err) != errcode.BackingNotFound {
		return err
	}
	return nil
}

// OpenName opens the file a backing reference made by an image in referrerDir
// names, read-only.
func (p Policy) OpenName(referrerDir, name string) (*os.File, Loc, unix.Stat_t, error) {
	loc, err := p.Locate(referrerDir, name)
	if err != nil {
		return nil, Loc{}, unix.Stat_t{}, err
	}
	f, st, err := p.Open(loc, How{Access: Read, Backing: true, Name: name})
	return f, loc, st, err
}

// Access is what a file is opened for.
type Access int

// Accesses.
const (
	Path      Access = iota // its attributes only (O_PATH)
	Read                    // reading (for a directory: listing it)
	ReadWrite               // reading and writing
)

// How says how Open opens a file.
type How struct {
	Access Access
	// Dir asks for a directory; otherwise only a regular file is opened.
	Dir bool
	// Want, when set, is the identity the caller showed for the file (a node
	// of the mount): another file there now is IMAGE_CHANGED.
	Want *FileID
	// Backing says the name is a backing reference: a missing file is then
	// BACKING_NOT_FOUND rather than NOT_FOUND.
	Backing bool
	// Name is the name to use in messages; the host path when empty.
	Name string
}

// Open opens the file at loc: openat2 beneath loc.Root's descriptor with
// RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS, so that neither "..", nor an absolute
// or escaping symlink, nor a magic link can leave the root — also not by a
// rename racing the open. Symlinks that stay beneath the root are followed.
//
// It first opens the file with O_PATH, which never blocks and has no side
// effect, and refuses anything but a regular file (a directory with h.Dir):
// FIFOs, sockets and devices are NOT_REGULAR_FILE. It then opens it for
// h.Access with O_NONBLOCK|O_NOCTTY (cleared again after the open) and checks
// that it is still the same file.
func (p Policy) Open(loc Loc, h How) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	if h.Name == "" {
		h.Name = loc.Path()
	}
	pfd, err := openat2(loc, unix.O_PATH)
	if err != nil {
		return nil, st, h.openError(err)
	}
	if err := h.check(pfd, &st, h.Want); err != nil {
		unix.Close(pfd)
		return nil, st, err
	}
	if h.Access == Path {
		return os.NewFile(uintptr(pfd), loc.Path()), st, nil
	}
	unix.Close(pfd)
	want := IDOf(&st)
	flags := unix.O_RDONLY
	if h.Access == ReadWrite {
		flags = unix.O_RDWR
	}
	if h.Dir {
		flags |= unix.O_DIRECTORY
	}
	fd, err := openat2(loc, flags|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return nil, st, h.openError(err)
	}
	if err := h.check(fd, &st, &want); err != nil {
		unix.Close(fd)
		return nil, st, err
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, st, errcode.New(errcode.ReadFailed, "opening '%s': %v", h.Name, err)
	}
	return os.NewFile(uintptr(fd), loc.Path()), st, nil
}

// Stat returns the attributes of the file at loc, found as Open finds it.
func (p Policy) Stat(loc Loc, h How) (unix.Stat_t, error) {
	h.Access = Path
	f, st, err := p.Open(loc, h)
	if err == nil {
		f.Close()
	}
	return st, err
}

// openTries bounds the retries of an openat2 that a concurrent rename made
// fail with EAGAIN.
const openTries = 16

func openat2(loc Loc, flags int) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	for try := 0; ; try++ {
		fd, err := unix.Openat2(loc.Root.fd, loc.Rel, &how)
		if (err == unix.EAGAIN && try < openTries) || err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// check stats fd and refuses another file than want (when set), then a file of
// the wrong type.
func (h How) check(fd int, st *unix.Stat_t, want *FileID) error {
	if err := unix.Fstat(fd, st); err != nil {
		return errcode.New(errcode.ReadFailed, "stat '%s': %v", h.Name, err)
	}
	if want != nil && IDOf(st) != *want {
		return errcode.New(errcode.ImageChanged, "'%s' was replaced by another file since it was looked up", h.Name)
	}
	kind, what := uint32(unix.S_IFREG), "a regular file"
	if h.Dir {
		kind, what = unix.S_IFDIR, "a directory"
	}
	if t := st.Mode & unix.S_IFMT; t != kind {
		return errcode.New(errcode.NotRegularFile, "'%s' is %s, not %s", h.Name, fileType(t), what)
	}
	return nil
}

func fileType(t uint32) string {
	switch t {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return "a special file"
}

// openError names what a failed openat2 means.
func (h How) openError(err error) error {
	what := "'" + h.Name + "'"
	if h.Backing {
		what = "backing file '" + h.Name + "'"
	}
	switch {
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return errcode.New(errcode.BackingPathOutsideRoot, "%s leaves the allowed directories (through .., a symlink or a magic link)", what)
	case errors.Is(err, unix.EAGAIN):
		return errcode.New(errcode.ImageChanged, "%s kept changing while it was opened", what)
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		if h.Backing {
			return errcode.New(errcode.BackingNotFound, "%s not found", what)
		}
		return errcode.New(errcode.NotFound, "could not open '%s': %v", h.Name, err)
	case h.Backing:
		return errcode.New(errcode.BackingNotFound, "opening %s: %v", what, err)
	}
	return errcode.New(errcode.NotFound, "could not open '%s': %v", h.Name, err)
}

// ReopenWritable replaces the read-only descriptor of im (a backing image) by
// a read-write one, opened where it was opened, checked to be the same file
// and locked as qemu locks an image it writes.
func (p Policy) ReopenWritable(im *Image) error {
	UnlockImage(im.File)
	id := im.ID()
	f, _, err := p.Open(im.Loc, How{Access: ReadWrite, Want: &id, Backing: true, Name: im.Name})
	if err != nil {
		return err
	}
	if err := LockImage(f, im.Name, true); err != nil {
		f.Close()
		return err
	}
	im.File.Close()
	im.File = f
	return nil
}
