package main

import (
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
	"instarfs/fs"
	"instarfs/vmm"
)

func (a *app) mountCommand() {
	var (
		imageDir, mountpoint string
		readOnly, allowOther bool
		debug                bool
	)
	c := a.Command("mount", "Mount a directory of images: one directory per image, with JSON about it and rebase/commit control files. Runs in the foreground until SIGINT, SIGTERM or an unmount; exits 0 after unmounting cleanly.")
	c.Flag("read-only", "Hide the control files and refuse every change.").BoolVar(&readOnly)
	c.Flag("allow-other", "Let other users use the mount (with default_permissions).").BoolVar(&allowOther)
	c.Flag("fuse-debug", "Log every FUSE request.").Hidden().BoolVar(&debug)
	c.Arg("imagedir", "The directory of images.").Required().StringVar(&imageDir)
	c.Arg("mountpoint", "An empty directory to mount on.").Required().StringVar(&mountpoint)
	a.actions[c.FullCommand()] = func() int {
		dir, err := filepath.Abs(imageDir)
		if err != nil {
			return fail(errcode.New(errcode.BadArguments, "image directory %q: %v", imageDir, err))
		}
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fail(errcode.New(errcode.NotFound, "image directory %s is not a directory", dir))
		}
		sb, err := vmm.New(a.global.sandbox)
		if err != nil {
			return fail(err)
		}
		policy, err := chainmodel.NewPolicy(append([]string{dir}, a.global.allowDirs...)...)
		if err != nil {
			return fail(err)
		}
		mnt, err := filepath.Abs(mountpoint)
		if err != nil {
			return fail(errcode.New(errcode.BadArguments, "mountpoint %q: %v", mountpoint, err))
		}
		// Image names are relative to the image directory, as when the
		// command line runs there.
		if err := os.Chdir(dir); err != nil {
			return fail(errcode.New(errcode.NotFound, "image directory %s: %v", dir, err))
		}
		log := logrus.StandardLogger()
		jobs := &ctl.JobManager{Sandbox: sb.Name(), Log: log}
		fsys, err := fs.New(fs.Config{
			ImageDir: dir,
			Opener:   &chainmodel.Opener{Sandbox: sb, Policy: policy},
			Jobs:     jobs,
			ReadOnly: readOnly,
			Log:      log,
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
		log.WithFields(logrus.Fields{"imagedir": dir, "mountpoint": mnt, "read_only": readOnly, "sandbox": jobs.Sandbox}).Info("mounted")
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
		log.WithField("mountpoint", mnt).Info("unmounted")
		return 0
	}
}
