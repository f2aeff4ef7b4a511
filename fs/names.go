package fs

import (
	"path/filepath"
	"strings"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
)

// hostName translates a file name written to a control file of the image at
// rel (cmd and flag say where, for messages) into the name qemu-img would be
// given: relative to the image file's directory on the host. Names a shell
// produces inside the mount are accepted too:
//
//   - an absolute path inside the mountpoint (tab completion from elsewhere);
//   - the text of a backing symlink, "../base.qcow2": relative to the image's
//     directory in the mount, which is one level deeper than the image file.
//
// A relative name that names an image in the mount's layout and another (or a
// file that may yet be created) in the host's is refused as ambiguous. Names
// that can never be an image file are refused first (ctl.CheckImageName).
func (f *FS) hostName(cmd, flag, rel, name string) (string, error) {
	if err := ctl.CheckImageName(cmd, flag, name); err != nil || name == "" {
		return name, err
	}
	dir := filepath.Dir(rel) // the image file's directory, relative to ImageDir
	if filepath.IsAbs(name) {
		m, err := filepath.Rel(f.mountpoint, name)
		if f.mountpoint == "" || err != nil || escapes(m) {
			return name, nil // a host path: the policy judges it
		}
		return filepath.Rel(dir, m)
	}
	inMount := filepath.Join(rel, name) // seen from the image's directory in the mount
	if escapes(inMount) || within(inMount, rel) && inMount != rel {
		return name, nil // it names nothing but a host file
	}
	onHost := filepath.Join(dir, name)
	mountFile, mountOK := f.regular(f.loc(inMount))
	var hostFile chainmodel.FileID
	hostLoc, refused := f.cfg.Opener.Policy.Locate(filepath.Join(f.cfg.ImageDir, dir), name)
	hostOK := false
	if refused == nil {
		hostFile, hostOK = f.regular(hostLoc)
	}
	switch {
	case mountOK && hostOK && mountFile != hostFile:
		return "", f.ambiguous(name, rel, inMount, onHost)
	case hostOK:
		return name, nil
	case mountOK:
		return filepath.Rel(dir, inMount)
	case refused != nil:
		return name, nil // the policy refuses it as it stands
	}
	// Neither exists, and either may be meant (a file created later).
	return "", f.ambiguous(name, rel, inMount, onHost)
}

// ambiguous is the error for a relative name that means inMount in the
// mount's layout and onHost in the host's.
func (f *FS) ambiguous(name, rel, inMount, onHost string) error {
	forms := "'" + filepath.Join(f.mountpoint, inMount) + "'"
	if !escapes(onHost) {
		forms += " or '" + filepath.Join(f.mountpoint, onHost) + "'"
	}
	short, _ := filepath.Rel(filepath.Dir(rel), inMount)
	return errcode.New(errcode.AmbiguousName,
		"'%s' is ambiguous: from the image's directory in the mount it names %s, from the image file's directory on the host %s; "+
			"write '%s' for the first, or an absolute path in the mount: %s",
		name, inMount, onHost, short, forms)
}

// regular returns the identity of the regular file at loc, if there is one
// the policy opens.
func (f *FS) regular(loc chainmodel.Loc) (chainmodel.FileID, bool) {
	st, err := f.cfg.Opener.Policy.Stat(loc, chainmodel.How{Name: loc.Rel})
	if err != nil {
		return chainmodel.FileID{}, false
	}
	return chainmodel.IDOf(&st), true
}

// escapes reports whether the clean relative path rel leaves its directory.
func escapes(rel string) bool {
	return rel == ".." || strings.HasPrefix(rel, "../")
}
