package main

import (
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"instarfs/ctl"
	"instarfs/diskview"
	"instarfs/errcode"
)

// mountConfig is the mount command's command line, checked.
type mountConfig struct {
	imageDir, mountpoint string // absolute once checked
	readOnly, allowOther bool
	debug                bool
	diskWorkers          int
	diskIdle             time.Duration
	cacheSize            int64
	maxDocument          int64
	workers              int
}

// mountCommand defines the mount command and checks its command line for
// both builds of this package; what runs it differs (a.mount): instarfs,
// built with the mountexec tag, links no FUSE library and executes
// instarfs-mount (mount_exec.go), this package built without the tag, which
// mounts in its own process (mount_serve.go).
func (a *app) mountCommand() {
	var cfg mountConfig
	c := a.Command("mount", "Mount a directory of images: one directory per image, with JSON about it, the guest-visible disk, and rebase, commit and repair control files. Runs in the foreground until SIGINT, SIGTERM or an unmount; exits 0 after unmounting cleanly.")
	c.Flag("read-only", "Hide the control files and refuse every change.").BoolVar(&cfg.readOnly)
	c.Flag("allow-other", "Let other users use the mount (with default_permissions).").BoolVar(&cfg.allowOther)
	c.Flag("disk-workers", "Live workers serving disk files at most; the least recently used one ends first.").Default(strconv.Itoa(diskview.DefaultMaxWorkers)).IntVar(&cfg.diskWorkers)
	c.Flag("disk-idle", "How long a disk worker outlives its last read.").Hidden().Default(diskview.DefaultIdle.String()).DurationVar(&cfg.diskIdle)
	c.Flag("fuse-debug", "Log every FUSE request.").Hidden().BoolVar(&cfg.debug)
	cacheSize := c.Flag("cache-size", "Bytes the mount may keep in its caches (probe results, what each file is, generated documents), least recently used dropped first; 0 caches nothing.").
		Default(strconv.Itoa(ctl.DefaultCacheBytes>>20) + "MiB").Bytes()
	maxDocument := c.Flag("max-document-size", "The largest generated document (info.json, chain.json, map.json, check.json) served; a larger one fails to open with DOCUMENT_TOO_LARGE (EFBIG).").
		Default(strconv.Itoa(ctl.DefaultMaxDocument>>20) + "MiB").Bytes()
	c.Flag("workers", "How many sandboxed workers may run at once; more requests wait.").
		Default(strconv.Itoa(2 * runtime.NumCPU())).IntVar(&cfg.workers)
	c.Arg("imagedir", "The directory of images.").Required().StringVar(&cfg.imageDir)
	c.Arg("mountpoint", "An empty directory to mount on.").Required().StringVar(&cfg.mountpoint)
	a.actions[c.FullCommand()] = func() int {
		cfg.cacheSize, cfg.maxDocument = int64(*cacheSize), int64(*maxDocument)
		if err := cfg.check(); err != nil {
			return fail(err)
		}
		return a.mount(cfg)
	}
}

// check checks cfg and makes its paths absolute.
func (cfg *mountConfig) check() error {
	dir, err := filepath.Abs(cfg.imageDir)
	if err != nil {
		return errcode.New(errcode.BadArguments, "image directory %q: %v", cfg.imageDir, err)
	}
	switch st, err := os.Stat(dir); {
	case errors.Is(err, iofs.ErrNotExist):
		return errcode.New(errcode.NotFound, "image directory %s does not exist", dir)
	case err != nil:
		return errcode.New(errcode.NotFound, "image directory %s: %v", dir, err)
	case !st.IsDir():
		return errcode.New(errcode.NotFound, "image directory %s is not a directory", dir)
	}
	if cfg.cacheSize < 0 || cfg.maxDocument <= 0 || cfg.workers < 1 {
		return errcode.New(errcode.BadArguments, "--cache-size must not be negative, --max-document-size and --workers must be positive")
	}
	mnt, err := filepath.Abs(cfg.mountpoint)
	if err != nil {
		return errcode.New(errcode.BadArguments, "mountpoint %q: %v", cfg.mountpoint, err)
	}
	cfg.imageDir, cfg.mountpoint = dir, mnt
	return nil
}
