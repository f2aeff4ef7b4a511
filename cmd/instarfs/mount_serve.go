//go:build !mountexec

package main

import (
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/fs"
	"instarfs/lru"
	"instarfs/vmm"
)

// mount mounts cfg.imageDir on cfg.mountpoint in this process and serves it
// until SIGINT, SIGTERM or an unmount.
func (a *app) mount(cfg mountConfig) int {
	sb, err := a.newSandbox()
	if err != nil {
		return fail(err)
	}
	sb = vmm.Limit(sb, cfg.workers)
	// One budget for every cache of the mount.
	cache := lru.New[any, any](cfg.cacheSize)
	policy, err := chainmodel.NewPolicy(append([]string{cfg.imageDir}, a.global.allowDirs...)...)
	if err != nil {
		return fail(err)
	}
	// Image names are relative to the image directory, as when the
	// command line runs there.
	policy.Dir = cfg.imageDir
	log := logrus.StandardLogger()
	jobs := &ctl.JobManager{Sandbox: sb, Log: log}
	fsys, err := fs.New(fs.Config{
		ImageDir:    cfg.imageDir,
		Opener:      &ctl.Opener{Sandbox: sb, Policy: policy, Cache: cache},
		Jobs:        jobs,
		ReadOnly:    cfg.readOnly,
		Cache:       cache,
		MaxDocument: cfg.maxDocument,
		Log:         log,
		DiskWorkers: cfg.diskWorkers,
		DiskIdle:    cfg.diskIdle,
	})
	if err != nil {
		return fail(err)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	mnt := cfg.mountpoint
	server, err := fs.Mount(mnt, fsys, fs.MountOptions{AllowOther: cfg.allowOther, Debug: cfg.debug})
	if err != nil {
		return fail(err)
	}
	log.WithFields(logrus.Fields{"imagedir": cfg.imageDir, "mountpoint": mnt, "read_only": cfg.readOnly, "sandbox": jobs.Sandbox,
		"cache_size": cfg.cacheSize, "max_document_size": cfg.maxDocument, "workers": cfg.workers}).Info("mounted")
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
