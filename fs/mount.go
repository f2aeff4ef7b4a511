package fs

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// MountOptions say how to mount.
type MountOptions struct {
	// AllowOther lets other users in; default_permissions is then on, so the
	// kernel enforces the files' modes (control files are 0200, owner only).
	AllowOther bool
	// Debug logs every FUSE request.
	Debug bool
}

// Mount checks mountpoint and mounts f there: as root directly (no
// fusermount3, and the real error if it fails), otherwise through fusermount3.
// A mountpoint that is already mounted, or that overlaps the image directory,
// is refused; a stale mount left by a crashed instarfs (ENOTCONN) is cleared
// first.
func Mount(mountpoint string, f *FS, opts MountOptions) (*fuse.Server, error) {
	mnt, err := CheckMountpoint(mountpoint, f.cfg.ImageDir, f.cfg.Log)
	if err != nil {
		return nil, err
	}
	f.mountpoint = mnt
	entry, attr, negative := time.Second, time.Second, time.Duration(0)
	mo := fuse.MountOptions{
		FsName:            f.cfg.ImageDir,
		Name:              "instarfs",
		AllowOther:        opts.AllowOther,
		DirectMountStrict: os.Geteuid() == 0,
		Debug:             opts.Debug,
		MaxBackground:     12,
		// Large requests: max_read and max_pages, for the disk view, whose
		// direct I/O files may still be mapped (where the kernel offers it),
		// as may the generated files (no ENODEV for MAP_SHARED).
		MaxWrite:          proto.MaxDiskRead,
		ExtraCapabilities: fuse.CAP_DIRECT_IO_ALLOW_MMAP,
	}
	if opts.AllowOther {
		mo.Options = append(mo.Options, "default_permissions")
	}
	if f.cfg.ReadOnly {
		mo.Options = append(mo.Options, "ro")
	}
	var server *fuse.Server
	said, err := captureStderr(os.Geteuid() != 0, func() (err error) {
		server, err = gofs.Mount(mnt, f.Root(), &gofs.Options{
			MountOptions:    mo,
			RootStableAttr:  &gofs.StableAttr{Ino: inodeNumber(kindDir, f.id.Dev, f.id.Ino), Mode: unix.S_IFDIR},
			EntryTimeout:    &entry,
			AttrTimeout:     &attr,
			NegativeTimeout: &negative,
			UID:             uint32(os.Getuid()),
			GID:             uint32(os.Getgid()),
			// Modes mirror the host's (setAttr): a mode of 0 must stay 0, not
			// become go-fuse's default 0644/0755.
			NullPermissions: true,
		})
		return err
	})
	if err != nil {
		return nil, mountError(mnt, err, said)
	}
	return server, nil
}

// captureStderr runs mount with file descriptor 2 on a pipe, when capture,
// and returns what was written there: fusermount3, which go-fuse starts with
// this process's stderr, says there why a mount failed. After a success the
// text goes on to stderr.
func captureStderr(capture bool, mount func() error) (string, error) {
	if !capture {
		return "", mount()
	}
	r, w, err := os.Pipe()
	if err != nil {
		return "", mount()
	}
	defer r.Close()
	saved, err := unix.Dup(2)
	if err != nil {
		w.Close()
		return "", mount()
	}
	unix.Dup2(int(w.Fd()), 2)
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 4096))
		io.Copy(io.Discard, r)
		read <- b
	}()
	err = mount()
	unix.Dup2(saved, 2)
	unix.Close(saved)
	w.Close()
	var said []byte
	select {
	case said = <-read:
	case <-time.After(time.Second): // a helper still holds the pipe
	}
	if err == nil {
		os.Stderr.Write(said)
	}
	return strings.TrimSpace(string(said)), err
}

// mountError explains a failed mount: what fusermount3 said and the fix that
// applies, rather than its wait status.
func mountError(mnt string, err error, said string) error {
	if said == "" {
		if strings.Contains(err.Error(), "fusermount") {
			return errcode.New(errcode.MountFailed, "mounting on %s: %v; a user other than root mounts with fusermount3: install it (Debian package fuse3), or mount as root", mnt, err)
		}
		return errcode.New(errcode.MountFailed, "mounting on %s: %v", mnt, err)
	}
	fix := ""
	switch {
	case strings.Contains(said, "/dev/fuse"):
		fix = "this user cannot open /dev/fuse: give it read and write access (the usual mode is 0666), or mount as root"
	case strings.Contains(said, "user_allow_other"):
		fix = "--allow-other needs a line user_allow_other in /etc/fuse.conf, or mount as root"
	case strings.Contains(said, "Operation not permitted"), strings.Contains(said, "Permission denied"):
		fix = "fusermount3 must be installed setuid root, and the mountpoint must be a directory this user owns and can write"
	}
	if fix != "" {
		fix = "; " + fix
	}
	return errcode.New(errcode.MountFailed, "mounting on %s failed: %s%s", mnt, strings.Join(strings.Fields(said), " "), fix)
}

// CheckMountpoint returns the absolute mountpoint after checking it: a
// directory, not mounted already, not inside the image directory nor holding
// it. A stale FUSE mount (ENOTCONN) is unmounted first.
func CheckMountpoint(mountpoint, imageDir string, log logrus.FieldLogger) (string, error) {
	mnt, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", errcode.New(errcode.BadArguments, "mountpoint %q: %v", mountpoint, err)
	}
	// statfs is never answered from the kernel's caches: on a mount whose
	// server died it fails with ENOTCONN even while stat still succeeds.
	var sfs unix.Statfs_t
	err = unix.Statfs(mnt, &sfs)
	if errors.Is(err, unix.ENOTCONN) {
		log.WithField("mountpoint", mnt).Warn("clearing a stale mount left by a crashed instarfs")
		if err := unmountNow(mnt, false); err != nil {
			if err := unmountNow(mnt, true); err != nil {
				return "", errcode.New(errcode.BadArguments, "mountpoint %s holds a stale mount that could not be unmounted: %v", mnt, err)
			}
		}
	}
	st, err := os.Stat(mnt)
	if err != nil {
		return "", errcode.New(errcode.NotFound, "mountpoint %s: %v", mnt, err)
	}
	if !st.IsDir() {
		return "", errcode.New(errcode.BadArguments, "mountpoint %s is not a directory", mnt)
	}
	if real, err := filepath.EvalSymlinks(mnt); err == nil {
		mnt = real
	}
	mounted, err := IsMounted(mnt)
	if err != nil {
		return "", errcode.New(errcode.Internal, "reading the mount table: %v", err)
	}
	if mounted {
		return "", errcode.New(errcode.BadArguments, "%s is already a mountpoint; unmount it first (mounts would stack)", mnt)
	}
	dir := imageDir
	if real, err := filepath.EvalSymlinks(imageDir); err == nil {
		dir = real
	}
	if within(mnt, dir) || within(dir, mnt) {
		return "", errcode.New(errcode.BadArguments, "mountpoint %s overlaps the image directory %s", mnt, dir)
	}
	return mnt, nil
}

// within reports whether path is dir or lies below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// IsMounted reports whether dir is a mountpoint in this mount namespace.
func IsMounted(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountNow unmounts mnt once, lazily (MNT_DETACH) if lazy: directly as
// root, otherwise with fusermount3.
func unmountNow(mnt string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		return unix.Unmount(mnt, flags)
	}
	args := []string{"-u", "-q"}
	if lazy {
		args = append(args, "-z")
	}
	out, err := exec.Command("fusermount3", append(args, mnt)...).CombinedOutput()
	if err != nil {
		return errors.New(strings.TrimSpace(string(out)) + ": " + err.Error())
	}
	return nil
}

// Unmount unmounts a mounted server, retrying while the mount is busy (an open
// file, a shell inside it) for up to patience, then detaching it lazily as a
// last resort. It returns once the server has stopped.
func Unmount(server *fuse.Server, mnt string, patience time.Duration, log logrus.FieldLogger) {
	deadline := time.Now().Add(patience)
	for {
		err := server.Unmount()
		if err == nil {
			break
		}
		if mounted, _ := IsMounted(mnt); !mounted {
			break
		}
		if time.Now().After(deadline) {
			log.WithFields(logrus.Fields{"mountpoint": mnt, "error": err}).Warn("the mount is still busy; detaching it")
			if err := unmountNow(mnt, true); err != nil {
				log.WithFields(logrus.Fields{"mountpoint": mnt, "error": err}).Error("could not detach the mount")
			}
			break
		}
		log.WithFields(logrus.Fields{"mountpoint": mnt, "error": err}).Info("the mount is busy; retrying")
		time.Sleep(250 * time.Millisecond)
	}
	server.Wait()
}
