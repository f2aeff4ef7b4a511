package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// worker writes a copy of this test binary, which is its own worker, into
// dir with mode, owned by uid.
func worker(t *testing.T, dir string, mode os.FileMode, uid int) string {
	t.Helper()
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, proto.WorkerArg0)
	if err := os.WriteFile(path, self, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if uid != os.Geteuid() {
		if err := os.Chown(path, uid, uid); err != nil {
			t.Skipf("cannot give the worker to uid %d: %v", uid, err)
		}
	}
	return path
}

// TestOpenWorker checks which files are taken as the worker executable, for
// a root host (whose workers run as uids of their own) and another user's.
func TestOpenWorker(t *testing.T) {
	const owner, other = 4242, 4343
	tests := []struct {
		name string
		path func(t *testing.T, dir string) string
		euid int
		want error // nil: the file is taken
	}{
		{"root, 0755", func(t *testing.T, d string) string { return worker(t, d, 0o755, 0) }, 0, nil},
		{"root, 0711", func(t *testing.T, d string) string { return worker(t, d, 0o711, 0) }, 0, nil},
		{"root, 0750", func(t *testing.T, d string) string { return worker(t, d, 0o750, 0) }, 0, errWorkerNotOthers},
		{"root, 0644", func(t *testing.T, d string) string { return worker(t, d, 0o644, 0) }, 0, errWorkerNotOthers},
		{"owner, 0700", func(t *testing.T, d string) string { return worker(t, d, 0o700, owner) }, owner, nil},
		{"owner, 0644", func(t *testing.T, d string) string { return worker(t, d, 0o644, owner) }, owner, errWorkerNoExec},
		{"other user, 0700", func(t *testing.T, d string) string { return worker(t, d, 0o700, owner) }, other, errWorkerNoExec},
		{"other user, 0701", func(t *testing.T, d string) string { return worker(t, d, 0o701, owner) }, other, nil},
		{"symbolic link to it", func(t *testing.T, d string) string {
			target := worker(t, d, 0o755, 0)
			link := filepath.Join(d, "link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, 0, nil},
		{"under a 0700 directory", func(t *testing.T, d string) string {
			sub := filepath.Join(d, "private")
			if err := os.Mkdir(sub, 0o700); err != nil {
				t.Fatal(err)
			}
			return worker(t, sub, 0o755, 0)
		}, 0, nil},
		{"missing", func(t *testing.T, d string) string { return filepath.Join(d, proto.WorkerArg0) }, 0, errWorkerMissing},
		{"a directory", func(t *testing.T, d string) string { return d }, 0, errWorkerNotFile},
		{"relative", func(t *testing.T, d string) string { return proto.WorkerArg0 }, 0, errWorkerRelative},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if os.Geteuid() != 0 && tt.euid != os.Geteuid() && tt.euid == 0 {
				t.Skip("the files of a root host need root to make")
			}
			path := tt.path(t, t.TempDir())
			fd, err := openWorker(path, tt.euid)
			if tt.want != nil {
				var we *workerError
				if !errors.As(err, &we) || !errors.Is(we.Err, tt.want) || we.Path != path {
					t.Fatalf("error %v, want %q about %s", err, tt.want, path)
				}
				if fd != -1 {
					t.Errorf("descriptor %d with an error", fd)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if fd < workerFDFloor || fd > 63 {
				t.Errorf("descriptor %d, want it in [%d, 63]", fd, workerFDFloor)
			}
			if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("descriptor flags %#x, %v: want close-on-exec", flags, err)
			}
		})
	}
}

// TestOpenWorkerNoexec checks a worker on a file system mounted noexec, in a
// mount namespace of a thread of its own.
func TestOpenWorkerNoexec(t *testing.T) {
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS)
		if err == nil {
			err = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
		}
		if err == nil {
			err = unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOEXEC, "size=64m")
		}
		if err != nil {
			done <- &os.SyscallError{Syscall: "mount", Err: err}
			return
		}
		path := worker(t, dir, 0o755, os.Geteuid())
		fd, err := openWorker(path, os.Geteuid())
		if err == nil {
			unix.Close(fd)
		}
		done <- err
	}()
	err := <-done
	var se *os.SyscallError
	if errors.As(err, &se) {
		t.Skipf("cannot mount a noexec file system here: %v", err)
	}
	var we *workerError
	if !errors.As(err, &we) || !errors.Is(we.Err, errWorkerNoexecFS) {
		t.Fatalf("error %v, want %q", err, errWorkerNoexecFS)
	}
}

// TestSurvives checks which descriptor numbers the child's placing of what
// it inherits leaves alone until exec.
func TestSurvives(t *testing.T) {
	five := []int{5, 6, 7, 8, 9}
	many := []int{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24}
	tests := []struct {
		name   string
		fd     int
		passed []int
		want   bool
	}{
		{"above all", 40, five, true},
		{"between the passed ones", 12, []int{5, 6, 20, 8, 9}, true},
		{"a target", 4, five, false},
		{"the last target", 4, []int{30, 31, 32, 33, 34}, false},
		{"just above the passed ones", 10, five, false},
		{"where moves land", 15, five, false},
		{"past the moves", 17, five, true},
		{"among many targets", 21, many, false},
		{"above many", 40, many, false},
		{"past many", 50, many, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, above := survives(tt.fd, tt.passed)
			if got != tt.want {
				t.Errorf("survives(%d, %v) = %v, want %v", tt.fd, tt.passed, got, tt.want)
			}
			if ok, _ := survives(above, tt.passed); !ok {
				t.Errorf("the duplicate's floor %d does not survive", above)
			}
		})
	}
}

// TestWorkerStarts runs a worker through the executable UseWorker chose, and
// checks the errors of one that cannot run.
func TestWorkerStarts(t *testing.T) {
	t.Cleanup(func() { UseWorker("/proc/self/exe") })
	tests := []struct {
		name  string
		setup func(t *testing.T) Job
		want  string // in the SANDBOX_UNAVAILABLE error; "" for success
	}{
		{"installed worker", func(t *testing.T) Job {
			UseWorker(worker(t, t.TempDir(), 0o755, os.Geteuid()))
			return Job{Request: proto.Request{Op: proto.OpNoop}}
		}, ""},
		{"descriptor where the child places its files", func(t *testing.T) Job {
			// The lowest free number, then enough files that it is one
			// of their places in the child.
			src, err := unix.Open("/proc/self/exe", unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defaultWorker.Store(&workerExe{fd: src})
			var files []*os.File
			var refs []proto.ImageRef
			for i := 0; i <= src; i++ {
				f, err := os.Open("/dev/null")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				files = append(files, f)
				refs = append(refs, proto.ImageRef{Name: "null"})
			}
			return Job{Request: proto.Request{Op: proto.OpNoop, Images: refs}, Files: files}
		}, ""},
		{"missing", func(t *testing.T) Job {
			UseWorker("/nonexistent/" + proto.WorkerArg0)
			return Job{Request: proto.Request{Op: proto.OpNoop}}
		}, "the worker executable /nonexistent/instarfs-worker does not exist"},
		{"not executable", func(t *testing.T) Job {
			path := worker(t, t.TempDir(), 0o644, os.Geteuid())
			UseWorker(path)
			return Job{Request: proto.Request{Op: proto.OpNoop}}
		}, "is not executable"},
		{"no worker chosen", func(t *testing.T) Job {
			defaultWorker.Store(nil)
			return Job{Request: proto.Request{Op: proto.OpNoop}}
		}, "no worker executable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := tt.setup(t)
			for _, start := range []string{"run", "session"} {
				var err error
				if start == "run" {
					_, err = plainProcess().Run(context.Background(), job)
				} else {
					job.Request.Op = "session"
					var s *Session
					if s, err = plainProcess().Start(context.Background(), job); err == nil {
						err = s.Close()
					}
				}
				switch {
				case tt.want == "" && err != nil:
					t.Errorf("%s: %v", start, err)
				case tt.want != "" && (errcode.Of(err) != errcode.SandboxUnavailable || !strings.Contains(err.Error(), tt.want)):
					t.Errorf("%s: error %v, want SANDBOX_UNAVAILABLE with %q", start, err, tt.want)
				}
			}
		})
	}
}
