package main

import (
	"errors"
	iofs "io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/diskview"
	"instarfs/errcode"
	"instarfs/fs"
	"instarfs/lru"
	"instarfs/vmm"
)

func (a *app) mountCommand() {
	var (
		imageDir, mountpoint string
		readOnly, allowOther bool
		debug                bool
		diskWorkers          int
		diskIdle             time.Duration
	)
	c := a.Command("mount", "Mount a directory of images: one directory per image, with JSON about it, the guest-visible disk, and rebase, commit and repair control files. Runs in the foreground until SIGINT, SIGTERM or an unmount; exits 0 after unmounting cleanly.")
	c.Flag("read-only", "Hide the control files and refuse every change.").BoolVar(&readOnly)
	c.Flag("allow-other", "Let other users use the mount (with default_permissions).").BoolVar(&allowOther)
	c.Flag("disk-workers", "Live workers serving disk files at most; the least recently used one ends first.").Default(strconv.Itoa(diskview.DefaultMaxWorkers)).IntVar(&diskWorkers)
	c.Flag("disk-idle", "How long a disk worker outlives its last read.").Hidden().Default(diskview.DefaultIdle.String()).DurationVar(&diskIdle)
	c.Flag("fuse-debug", "Log every FUSE request.").Hidden().BoolVar(&debug)
	cacheSize := c.Flag("cache-size", "Bytes the mount may keep in its caches (probe results, what each file is, generated documents), least recently used dropped first; 0 caches nothing.").
		Default(strconv.Itoa(ctl.DefaultCacheBytes>>20) + "MiB").Bytes()
	maxDocument := c.Flag("max-document-size", "The largest generated document (info.json, chain.json, map.json, check.json) served; a larger one fails to open with DOCUMENT_TOO_LARGE (EFBIG).").
		Default(strconv.Itoa(fs.DefaultMaxDocument>>20) + "MiB").Bytes()
	workers := c.Flag("workers", "How many sandboxed workers may run at once; more requests wait.").
		Default(strconv.Itoa(2 * runtime.NumCPU())).Int()
	c.Arg("imagedir", "The directory of images.").Required().StringVar(&imageDir)
	c.Arg("mountpoint", "An empty directory to mount on.").Required().StringVar(&mountpoint)
	a.actions[c.FullCommand()] = func() int {
		dir, err := filepath.Abs(imageDir)
		if err != nil {
			return fail(errcode.New(errcode.BadArguments, "image directory %q: %v", imageDir, err))
		}
		switch st, err := os.Stat(dir); {
		case errors.Is(err, iofs.ErrNotExist):
			return fail(errcode.New(errcode.NotFound, "image directory %s does not exist", dir))
		case err != nil:
			return fail(errcode.New(errcode.NotFound, "image directory %s: %v", dir, err))
		case !st.IsDir():
			return fail(errcode.New(errcode.NotFound, "image directory %s is not a directory", dir))
		}
		if *cacheSize < 0 || *maxDocument <= 0 || *workers < 1 {
			return fail(errcode.New(errcode.BadArguments, "--cache-size must not be negative, --max-document-size and --workers must be positive"))
		}
		sb, err := a.newSandbox()
		if err != nil {
			return fail(err)
		}
		sb = vmm.Limit(sb, *workers)
		// One budget for every cache of the mount.
		cache := lru.New[any, any](int64(*cacheSize))
		policy, err := chainmodel.NewPolicy(append([]string{dir}, a.global.allowDirs...)...)
		if err != nil {
			return fail(err)
		}
		// Image names are relative to the image directory, as when the
		// command line runs there.
		policy.Dir = dir
		mnt, err := filepath.Abs(mountpoint)
		if err != nil {
			return fail(errcode.New(errcode.BadArguments, "mountpoint %q: %v", mountpoint, err))
		}
		log := logrus.StandardLogger()
		jobs := &ctl.JobManager{Sandbox: sb, Log: log}
		fsys, err := fs.New(fs.Config{
			ImageDir:    dir,
			Opener:      &ctl.Opener{Sandbox: sb, Policy: policy, Cache: cache},
			Jobs:        jobs,
			ReadOnly:    readOnly,
			Cache:       cache,
			MaxDocument: int64(*maxDocument),
			Log:         log,
			DiskWorkers: diskWorkers,
			DiskIdle:    diskIdle,
		})
		if err != nil {
			return fail(err)
		}
		sigs := make(chan os.Signal, 2)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sigs)
		server, err := fs.Mount(mnt, fsys, fs.MountOptions{AllowOther: allowOther, Debug: debug})
		if err != nil {
			return fail(err)
		}
		log.WithFields(logrus.Fields{"imagedir": dir, "mountpoint": mnt, "read_only": readOnly, "sandbox": jobs.Sandbox,
			"cache_size": int64(*cacheSize), "max_document_size": int64(*maxDocument), "workers": *workers}).Info("mounted")
		stopped := make(chan struct{})
		go func() {
			select {
			case sig := <-sigs:
				log.WithField("signal", sig.String()).Info("unmounting")
				// Running jobs stop at a crash-safe point; their writers get EINTR.
				jobs.CancelAll()
				fs.Unmount(server, mnt, 10*time.Second, log)
			case <-stopped:
			}
		}()
		server.Wait()
		close(stopped)
		jobs.CancelAll()
		fsys.Close()
		log.WithField("mountpoint", mnt).Info("unmounted")
		return 0
	}
}
