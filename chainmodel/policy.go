package chainmodel

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
)

// Policy says which files a backing reference may reach: only files below one
// of Roots, reached without leaving it through "..", a symlink or a magic link.
type Policy struct {
	Roots []string // absolute, cleaned directories
}

// NewPolicy returns a policy over the given directories.
func NewPolicy(dirs ...string) (Policy, error) {
	var p Policy
	for _, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return Policy{}, errcode.New(errcode.BadArguments, "allowed directory %q: %v", d, err)
		}
		p.Roots = append(p.Roots, abs)
	}
	return p, nil
}

// protocolPrefix matches what qemu would take for a protocol ("nbd:", "http:",
// "file:", "json:"): a scheme-like word and a colon before any slash.
var protocolPrefix = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// MaxBackingName is the longest backing name qcow2 allows.
const MaxBackingName = 1023

// Locate checks a backing reference made by an image in directory referrerDir
// and returns the root it lies under and its path relative to that root. It
// opens nothing.
func (p Policy) Locate(referrerDir, name string) (root, rel string, err error) {
	switch {
	case name == "":
		return "", "", errcode.New(errcode.BadArguments, "empty backing file name")
	case strings.HasPrefix(name, "json:"):
		return "", "", errcode.New(errcode.BackingProtocol, "backing file %q is a json: specification, which is refused", name)
	case protocolPrefix.MatchString(name):
		return "", "", errcode.New(errcode.BackingProtocol, "backing file %q names a protocol, which is refused", name)
	case len(name) > MaxBackingName:
		return "", "", errcode.New(errcode.BadArguments, "backing file name is %d bytes long (at most %d)", len(name), MaxBackingName)
	case strings.IndexByte(name, 0) >= 0:
		return "", "", errcode.New(errcode.BadArguments, "backing file name %q contains a NUL byte", name)
	}
	abs := name
	if !filepath.IsAbs(name) {
		abs = filepath.Join(referrerDir, name)
	}
	for _, r := range p.Roots {
		if rel, err := filepath.Rel(r, abs); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return r, rel, nil
		}
	}
	return "", "", errcode.New(errcode.BackingPathOutsideRoot, "backing file %q is outside the image directory", name)
}

// Open opens a backing reference read-only (or read-write) under the policy. The
// kernel resolves the path beneath the root, so a symlink or ".." that leaves
// the root fails without the target ever being opened.
func (p Policy) Open(referrerDir, name string, writable bool) (*os.File, string, error) {
	root, rel, err := p.Locate(referrerDir, name)
	if err != nil {
		return nil, "", err
	}
	f, err := openBeneath(root, rel, writable)
	switch {
	case err == nil:
		return f, filepath.Join(root, rel), nil
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return nil, "", errcode.New(errcode.BackingPathOutsideRoot, "backing file %q leaves the image directory", name)
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return nil, "", errcode.New(errcode.BackingNotFound, "backing file %q not found", name)
	default:
		return nil, "", errcode.New(errcode.BackingNotFound, "opening backing file %q: %v", name, err)
	}
}

func openBeneath(root, rel string, writable bool) (*os.File, error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	flags := unix.O_RDONLY
	if writable {
		flags = unix.O_RDWR
	}
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOCTTY),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(dir, rel, &how)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG && st.Mode&unix.S_IFMT != unix.S_IFBLK {
		unix.Close(fd)
		if err == nil {
			err = unix.EINVAL
		}
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, rel)), nil
}
