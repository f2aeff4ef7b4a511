package fs

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
	"instarfs/internal/fusetest"
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/vmmtest"
)

// These tests mount the filesystem in this process, over a directory of files
// that a fake worker (vmmtest) describes: what the mount shows and refuses
// does not depend on real images. Real images are the integration tests'.

// fakeWorker answers the runs of a mount: a file whose name ends in .qcow2 is
// a qcow2 image of 4096 virtual bytes per byte of the file, backed by what
// backing says; any other file is not an image, unless opened as raw. Its
// map and check answers are valid for every image. answers overrides the
// answer to an operation on one image ("op name"); a probe's also overrides
// what a run with a broker reads in that image as a member of a chain. Like
// a real worker, a run with a broker asks it for each backing file it reads
// (vmmtest.Discover).
type fakeWorker struct {
	mu      sync.Mutex
	backing map[string]string // image name -> backing name (raw when it ends in .raw)
	answers map[string]vmmtest.Answer
	runs    map[string]int // by "op name"
}

// count returns how many runs of op on the image name began.
func (w *fakeWorker) count(op, name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.runs[op+" "+name]
}

func (w *fakeWorker) set(op, name string, a vmmtest.Answer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.answers[op+" "+name] = a
}

func (w *fakeWorker) unset(op, name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.answers, op+" "+name)
}

// override returns the answer set for op on the image name.
func (w *fakeWorker) override(op, name string) (vmmtest.Answer, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a, ok := w.answers[op+" "+name]
	return a, ok
}

func (w *fakeWorker) answer(_ context.Context, job vmm.Job) vmmtest.Answer {
	req := job.Request
	top := req.Images[0]
	w.mu.Lock()
	w.runs[req.Op+" "+top.Name]++
	w.mu.Unlock()
	if job.Broker != nil {
		return w.brokered(job)
	}
	if a, ok := w.override(req.Op, top.Name); ok {
		return a
	}
	if req.Op == proto.OpProbe {
		info, err := w.describe(0, top, job.Files[0])
		if err != nil {
			return vmmtest.Answer{Err: err}
		}
		doc, _ := json.Marshal(info)
		return vmmtest.Answer{Result: doc}
	}
	return w.own(req.Op, top, job.Files[0])
}

// brokered answers a run with a broker: the worker reads the chain, asking
// for its files, then does the operation.
func (w *fakeWorker) brokered(job vmm.Job) vmmtest.Answer {
	req := job.Request
	top := req.Images[0]
	infos, err := vmmtest.Discover(job, w.describe)
	switch {
	case err != nil && req.Op == proto.OpProbe && len(infos) > 0:
		doc, _ := json.Marshal(proto.ChainInfo{Images: infos, Error: errcode.From(err)})
		return vmmtest.Answer{Result: doc}
	case err != nil:
		return vmmtest.Answer{Err: vmmtest.Reported(err)}
	}
	if a, ok := w.override(req.Op, top.Name); ok {
		return a
	}
	switch req.Op {
	case proto.OpProbe:
		doc, _ := json.Marshal(proto.ChainInfo{Images: infos})
		return vmmtest.Answer{Result: doc}
	case proto.OpSurvey:
		return w.survey(infos, top, job.Files[0])
	}
	return w.own(req.Op, top, job.Files[0])
}

// survey answers a survey with what the map and check runs of the image
// would answer: an error a worker may send is the map's or the check's,
// any other ends the run.
func (w *fakeWorker) survey(infos []proto.Info, top proto.ImageRef, f *os.File) vmmtest.Answer {
	res := proto.SurveyResult{Images: infos}
	part := func(op string) (vmmtest.Answer, *errcode.Error) {
		a, ok := w.override(op, top.Name)
		if !ok {
			a = w.own(op, top, f)
		}
		if a.Err != nil && errcode.Of(a.Err).FromWorker() {
			return a, errcode.From(a.Err)
		}
		return a, nil
	}
	m, mapErr := part(proto.OpMap)
	switch {
	case mapErr != nil:
		res.MapError = mapErr
	case m.Err != nil:
		return m
	default:
		if err := res.Map.UnmarshalJSON(m.Result); err != nil {
			return vmmtest.BadOutput.Answer()
		}
	}
	c, checkErr := part(proto.OpCheck)
	switch {
	case checkErr != nil:
		res.CheckError = checkErr
	case c.Err != nil:
		return c
	default:
		res.Check = new(proto.CheckResult)
		if err := json.Unmarshal(c.Result, res.Check); err != nil {
			return vmmtest.BadOutput.Answer()
		}
	}
	doc, _ := json.Marshal(res)
	return vmmtest.Answer{Result: doc}
}

// describe is what the worker reads in an image opened as ref on f.
func (w *fakeWorker) describe(_ int, ref proto.ImageRef, f *os.File) (proto.Info, error) {
	name := filepath.Base(ref.Name)
	if a, ok := w.override(proto.OpProbe, name); ok {
		var info proto.Info
		if a.Err != nil {
			return info, a.Err
		}
		return info, json.Unmarshal(a.Result, &info)
	}
	w.mu.Lock()
	backing := w.backing[name]
	w.mu.Unlock()
	size, err := w.size(ref, f)
	if err != nil {
		return proto.Info{}, err
	}
	if ref.Format != "raw" && !strings.HasSuffix(name, ".qcow2") {
		return proto.Info{}, errcode.New(errcode.FormatNotDetected, "'%s': not an image", name)
	}
	info := proto.Info{Format: "qcow2", VirtualSize: size, ClusterSize: 65536}
	if ref.Format == "raw" {
		info = proto.Info{Format: "raw", VirtualSize: size}
	}
	if backing != "" {
		info.BackingFilename, info.BackingFilenameFormat = backing, "qcow2"
		if strings.HasSuffix(backing, ".raw") {
			info.BackingFilenameFormat = "raw"
		}
	}
	return info, nil
}

// size is the virtual size of the image opened as ref on f.
func (w *fakeWorker) size(ref proto.ImageRef, f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	if ref.Format == "raw" {
		return st.Size, nil
	}
	return st.Size * 4096, nil
}

// own is the answer to op on the image opened as ref on f, once the worker
// has read its chain.
func (w *fakeWorker) own(op string, ref proto.ImageRef, f *os.File) vmmtest.Answer {
	size, err := w.size(ref, f)
	if err != nil {
		return vmmtest.Answer{Err: err}
	}
	switch op {
	case proto.OpMap:
		return mapAnswer(proto.MapEntry{Length: size, Present: true, Data: true, Offset: new(int64)})
	case proto.OpCheck:
		return vmmtest.Result(`{"supported":true,"check_errors":0,"corruptions":0,"leaks":0,"image_end_offset":65536,"total_clusters":16,` +
			`"allocated_clusters":1,"fragmented_clusters":0,"compressed_clusters":0,"messages":null}`)
	}
	return vmmtest.Answer{Err: errcode.New(errcode.Internal, "fake worker: no %s", op)}
}

// mounted is a filesystem mounted in this process.
type mounted struct {
	dir, mnt string
	worker   *fakeWorker
	sandbox  *vmmtest.Sandbox
}

func (m *mounted) path(p ...string) string { return filepath.Join(append([]string{m.mnt}, p...)...) }

// file writes a file of size bytes at p in the image directory, with mode.
func (m *mounted) file(t *testing.T, p string, size int, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(m.dir, filepath.Dir(p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.dir, p), make([]byte, size), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(m.dir, p), mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// testMount mounts an empty image directory on t.TempDir(), its workers
// answered by a fakeWorker, with backing names as given. setup fills the
// directory before the mount. The mount is unmounted when the test ends,
// whether it failed or not.
func testMount(t *testing.T, readOnly bool, backing map[string]string, setup func(m *mounted)) *mounted {
	t.Helper()
	fusetest.Need(t)
	if backing == nil {
		backing = map[string]string{}
	}
	w := &fakeWorker{backing: backing, answers: map[string]vmmtest.Answer{}, runs: map[string]int{}}
	m := &mounted{dir: t.TempDir(), mnt: t.TempDir(), worker: w, sandbox: vmmtest.Func(w.answer)}
	if setup != nil {
		setup(m)
	}
	// The mount's log and every FUSE request, with -v.
	log := logrus.New()
	log.SetOutput(io.Discard)
	if testing.Verbose() {
		log.SetOutput(os.Stderr)
		log.SetLevel(logrus.DebugLevel)
	}
	policy, err := chainmodel.NewPolicy(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(policy.Close)
	policy.Dir = m.dir
	fsys, err := New(Config{
		ImageDir: m.dir,
		Opener:   &ctl.Opener{Sandbox: m.sandbox, Policy: policy},
		Jobs:     &ctl.JobManager{Sandbox: m.sandbox, Log: log},
		ReadOnly: readOnly,
		Log:      log,
	})
	if err != nil {
		t.Fatal(err)
	}
	server, err := Mount(m.mnt, fsys, MountOptions{Debug: testing.Verbose()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		Unmount(server, m.mnt, 5*time.Second, log)
		fsys.Close()
		if mounted, _ := IsMounted(m.mnt); mounted {
			t.Errorf("%s is still mounted", m.mnt)
		}
	})
	return m
}

// list returns the names in the directory at p of the mount, in order.
func (m *mounted) list(t *testing.T, p ...string) []string {
	t.Helper()
	des, err := os.ReadDir(m.path(p...))
	if err != nil {
		t.Fatalf("listing %s: %v", filepath.Join(p...), err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// read returns the content of the file at p of the mount.
func (m *mounted) read(t *testing.T, p ...string) string {
	t.Helper()
	b, err := os.ReadFile(m.path(p...))
	if err != nil {
		t.Fatalf("reading %s: %v", filepath.Join(p...), err)
	}
	return string(b)
}

// errnoOf is the errno err carries, 0 for none.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if err != nil && !errors.As(err, &e) {
		return syscall.Errno(^uintptr(0))
	}
	return e
}

// TestMountedTree checks what the mount shows: directories, images as
// directories of their files, the backing link, and no other file; small
// files are hidden without a worker, and each file is probed once while it
// is unchanged.
func TestMountedTree(t *testing.T) {
	for _, readOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("read-only=%v", readOnly), func(t *testing.T) {
			m := testMount(t, readOnly, map[string]string{"overlay.qcow2": "base.qcow2", "top.qcow2": "disk.raw", "lost.qcow2": "gone.qcow2"},
				func(m *mounted) {
					m.file(t, "base.qcow2", 1024, 0o644)
					m.file(t, "overlay.qcow2", 1024, 0o644)
					m.file(t, "lost.qcow2", 1024, 0o644)
					m.file(t, "small.qcow2", 511, 0o644)
					m.file(t, "notes.txt", 4096, 0o644)
					m.file(t, "sub/top.qcow2", 1024, 0o644)
					m.file(t, "sub/disk.raw", 1024, 0o644)
					m.file(t, "sub/other.raw", 1024, 0o644)
					m.file(t, "empty/.keep", 0, 0o644)
					if err := os.Symlink("base.qcow2", filepath.Join(m.dir, "link.qcow2")); err != nil {
						t.Fatal(err)
					}
					if err := unix.Mkfifo(filepath.Join(m.dir, "fifo.qcow2"), 0o644); err != nil {
						t.Fatal(err)
					}
				})
			files := []string{"backing", "chain.json", "check.json", "commit", "disk", "info.json", "map.json", "map.svg", "rebase", "repair", "result.json", "status"}
			if readOnly {
				files = []string{"backing", "chain.json", "check.json", "disk", "info.json", "map.json", "map.svg", "result.json", "status"}
			}
			noBacking := []string{}
			for _, f := range files {
				if f != "backing" {
					noBacking = append(noBacking, f)
				}
			}
			for _, tt := range []struct {
				dir  string
				want []string
			}{
				{".", []string{"base.qcow2", "empty", "lost.qcow2", "overlay.qcow2", "sub"}},
				{"sub", []string{"disk.raw", "top.qcow2"}},
				{"empty", nil},
				{"overlay.qcow2", files},
				{"sub/top.qcow2", files},
				{"base.qcow2", noBacking},
				{"lost.qcow2", files}, // a link to where the missing backing file would be
				{"sub/disk.raw", noBacking},
			} {
				if got := m.list(t, tt.dir); strings.Join(got, " ") != strings.Join(tt.want, " ") {
					t.Errorf("%s lists %q, want %q", tt.dir, got, tt.want)
				}
			}
			for _, tt := range []struct{ link, want string }{
				{"overlay.qcow2/backing", "../base.qcow2"},
				{"sub/top.qcow2/backing", "../disk.raw"},
				{"lost.qcow2/backing", "../gone.qcow2"},
			} {
				if got, err := os.Readlink(m.path(tt.link)); err != nil || got != tt.want {
					t.Errorf("%s -> %q, %v; want %q", tt.link, got, err, tt.want)
				}
			}
			for _, p := range []string{"notes.txt", "small.qcow2", "link.qcow2", "fifo.qcow2", "sub/other.raw", "empty/.keep", "base.qcow2/nothing", "overlay.qcow2/backing/nothing"} {
				if _, err := os.Lstat(m.path(p)); errnoOf(err) != syscall.ENOENT {
					t.Errorf("%s: %v, want ENOENT", p, err)
				}
			}
			if s := m.read(t, "overlay.qcow2", "backing", "info.json"); !strings.Contains(s, `"filename": "base.qcow2"`) {
				t.Errorf("info.json through the backing link:\n%s", s)
			}
			if s := m.read(t, "sub", "top.qcow2", "chain.json"); !strings.Contains(s, `"filename": "sub/disk.raw"`) || !strings.Contains(s, `"format": "raw"`) {
				t.Errorf("sub/top.qcow2/chain.json does not name its raw backing file:\n%s", s)
			}
			for _, tt := range []struct{ file, want string }{
				{"status", "idle\n"},
				{"result.json", "null\n"},
			} {
				if got := m.read(t, "base.qcow2", tt.file); got != tt.want {
					t.Errorf("%s: %q, want %q", tt.file, got, tt.want)
				}
			}
			// A file too small to be an image is never probed; another is
			// probed once while it is unchanged, however often it is listed
			// or looked up.
			for name, want := range map[string]int{"small.qcow2": 0, "notes.txt": 1} {
				if got := m.worker.count(proto.OpProbe, name); got != want {
					t.Errorf("%s was probed %d times, want %d", name, got, want)
				}
			}
			probes := m.sandbox.Runs(proto.OpProbe)
			m.list(t, ".")
			if got := m.sandbox.Runs(proto.OpProbe); got != probes {
				t.Errorf("listing the root again ran %d probes", got-probes)
			}
			if err := os.WriteFile(filepath.Join(m.dir, "base.qcow2"), make([]byte, 2048), 0o644); err != nil {
				t.Fatal(err)
			}
			m.list(t, ".")
			if got := m.sandbox.Runs(proto.OpProbe); got != probes+1 {
				t.Errorf("listing the root after base.qcow2 changed ran %d probes, want 1", got-probes)
			}
		})
	}
}

// TestMountedProbeFailure checks that a file whose probe fails in a way that
// says nothing about it is hidden only until it is looked up again, after a
// few tries; and that a recognised image the worker refuses is shown, its
// files failing with the refusal's errno.
func TestMountedProbeFailure(t *testing.T) {
	m := testMount(t, false, nil, func(m *mounted) {
		m.file(t, "a.qcow2", 1024, 0o644)
	})
	// A lookup classifies the file more than once (before and while it
	// scans the directory for raw files named as backing files). A failure
	// that is not transient (a forbidden call, a cancelled worker) is not
	// tried again, the others probeTries times each time.
	lookup := func(name string, a vmmtest.Answer) int {
		m.worker.set(proto.OpProbe, name, a)
		m.file(t, name, 1024, 0o644)
		if _, err := os.Stat(m.path(name)); errnoOf(err) != syscall.ENOENT {
			t.Errorf("stat %s: %v, want ENOENT", name, err)
		}
		return m.worker.count(proto.OpProbe, name)
	}
	perLookup := lookup("calibrate.qcow2", vmmtest.Violation.Answer())
	if perLookup == 0 {
		t.Fatal("a lookup probed nothing")
	}
	for _, f := range vmmtest.Failures {
		t.Run(f.String(), func(t *testing.T) {
			// A name of its own, which the kernel has not looked up.
			name := strings.ReplaceAll(f.String(), " ", "-") + ".qcow2"
			want := probeTries * perLookup
			if f == vmmtest.Violation || f == vmmtest.Cancelled {
				want = perLookup
			}
			if tries := lookup(name, f.Answer()); tries != want {
				t.Errorf("%d probes in a lookup, want %d", tries, want)
			}
			m.worker.unset(proto.OpProbe, name)
			if _, err := os.Stat(m.path(name, "info.json")); err != nil {
				t.Errorf("after the worker recovered: %v", err)
			}
		})
	}
	for _, refusal := range []*errcode.Error{
		errcode.New(errcode.Qcow2Corrupt, "corrupt"),
		errcode.New(errcode.VmdkUnsupported, "unsupported"),
		errcode.New(errcode.ImageTooLarge, "too large"),
	} {
		t.Run(fmt.Sprint(refusal.Code), func(t *testing.T) {
			m.worker.set(proto.OpProbe, "a.qcow2", vmmtest.Answer{Err: refusal})
			touch(t, filepath.Join(m.dir, "a.qcow2"))
			for _, f := range []string{"info.json", "chain.json", "map.json", "check.json"} {
				if _, err := os.ReadFile(m.path("a.qcow2", f)); errnoOf(err) != errcode.Of(refusal).Errno() {
					t.Errorf("%s: %v, want %v", f, err, errcode.Of(refusal).Errno())
				}
			}
		})
	}
}

// touch gives the file at p a new modification time, so that what the mount
// knows about it is stale.
func touch(t *testing.T, p string) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	next := st.ModTime().Add(time.Second)
	if err := os.Chtimes(p, next, next); err != nil {
		t.Fatal(err)
	}
}

// TestMountedModes checks that owners and modes mirror the host's: an image
// directory can be entered where the image can be read, generated files can
// be read where the image can, control files written where it can be
// written.
func TestMountedModes(t *testing.T) {
	tests := []struct {
		host                      os.FileMode
		image, generated, control os.FileMode
	}{
		{0o644, 0o555, 0o444, 0o600},
		{0o600, 0o500, 0o400, 0o600},
		{0o640, 0o550, 0o440, 0o600},
		{0o664, 0o555, 0o444, 0o660},
		{0o444, 0o555, 0o444, 0o000},
		{0o400, 0o500, 0o400, 0o000},
		{0o220, 0o000, 0o000, 0o220},
		{0o000, 0o000, 0o000, 0o000},
	}
	name := func(mode os.FileMode) string { return fmt.Sprintf("m%03o.qcow2", mode) }
	m := testMount(t, false, map[string]string{name(0o644): "x.qcow2"}, func(m *mounted) {
		for _, tt := range tests {
			m.file(t, name(tt.host), 1024, tt.host)
			if err := os.Chown(filepath.Join(m.dir, name(tt.host)), 1234, 5678); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Mkdir(filepath.Join(m.dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(filepath.Join(m.dir, "sub"), 0o1730); err != nil {
			t.Fatal(err)
		}
	})
	check := func(p string, want os.FileMode, uid uint32) {
		t.Helper()
		fi, err := os.Lstat(m.path(p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return
		}
		st := fi.Sys().(*syscall.Stat_t)
		if got := st.Mode &^ unix.S_IFMT; got != uint32(want) || st.Uid != uid {
			t.Errorf("%s: mode %04o owner %d, want %04o owner %d", p, got, st.Uid, want, uid)
		}
	}
	for _, tt := range tests {
		img := name(tt.host)
		check(img, tt.image, 1234)
		for _, f := range []string{"info.json", "chain.json", "map.json", "map.svg", "check.json", "status", "result.json", "disk"} {
			check(img+"/"+f, tt.generated, 1234)
		}
		for _, f := range []string{"rebase", "commit", "repair"} {
			check(img+"/"+f, tt.control, 1234)
		}
	}
	check(name(0o644)+"/backing", 0o777, 1234)
	check("sub", 0o1730, 0)
	if fi, err := os.Stat(m.path(name(0o644))); err != nil || fi.Sys().(*syscall.Stat_t).Gid != 5678 {
		t.Errorf("group of an image directory: %v", err)
	}
}

// dirents returns the inode numbers readdir(3) gives for the entries of the
// directory at p.
func dirents(t *testing.T, p string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	out := map[string]uint64{}
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
		for b := buf[:n]; len(b) > 0; {
			// struct linux_dirent64: d_ino, d_off, d_reclen, d_type, d_name
			ino := binary.NativeEndian.Uint64(b)
			reclen := binary.NativeEndian.Uint16(b[16:])
			name := b[19:reclen]
			out[string(name[:bytes.IndexByte(name, 0)])] = ino
			b = b[reclen:]
		}
	}
}

// TestMountedInodes checks inode numbers: derived from the host file's
// identity and the kind of node, the same in stat and readdir, the same
// after the kernel forgot the node, and different for every node.
func TestMountedInodes(t *testing.T) {
	m := testMount(t, false, nil, func(m *mounted) {
		m.file(t, "a.qcow2", 1024, 0o644)
		m.file(t, "sub/b.qcow2", 1024, 0o644)
	})
	host := func(p string) unix.Stat_t {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(m.dir, p), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	ino := func(p string) uint64 {
		var st unix.Stat_t
		if err := unix.Stat(m.path(p), &st); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return st.Ino
	}
	a, sub, root := host("a.qcow2"), host("sub"), host(".")
	want := map[string]uint64{
		".":       inodeNumber(kindDir, root.Dev, root.Ino),
		"a.qcow2": inodeNumber(kindImage, a.Dev, a.Ino),
		"sub":     inodeNumber(kindDir, sub.Dev, sub.Ino),
	}
	for _, f := range imageFiles {
		if f.kind != kindBacking {
			want["a.qcow2/"+f.name] = inodeNumber(f.kind, a.Dev, a.Ino)
		}
	}
	seen := map[uint64]string{}
	for p, n := range want {
		if got := ino(p); got != n {
			t.Errorf("%s: inode %d, want %d", p, got, n)
		}
		if other, dup := seen[n]; dup {
			t.Errorf("%s and %s have inode %d", p, other, n)
		}
		seen[n] = p
	}
	for dir, names := range map[string][]string{".": {"a.qcow2", "sub"}, "a.qcow2": {"info.json", "rebase", "disk"}} {
		listed := dirents(t, m.path(dir))
		if listed["."] != want[dir] {
			t.Errorf("readdir of %s: . is %d, want %d", dir, listed["."], want[dir])
		}
		for _, n := range names {
			p := filepath.Join(dir, n)
			if listed[n] != want[p] {
				t.Errorf("readdir of %s: %s is %d, stat says %d", dir, n, listed[n], want[p])
			}
		}
	}
	if listed := dirents(t, m.path("a.qcow2")); listed[".."] != want["."] {
		t.Errorf("readdir of a.qcow2: .. is %d, want %d", listed[".."], want["."])
	}
	time.Sleep(1200 * time.Millisecond) // past the entry and attribute timeouts
	for _, p := range []string{"a.qcow2", "a.qcow2/info.json", "sub"} {
		if got := ino(p); got != want[p] {
			t.Errorf("%s: inode %d after the kernel forgot it, was %d", p, got, want[p])
		}
	}
}

// TestMountedRefused checks that the namespace and extended attributes do not
// change: every such call fails with EPERM (EROFS on a read-only mount), and
// the image directory is as it was.
func TestMountedRefused(t *testing.T) {
	for _, readOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("read-only=%v", readOnly), func(t *testing.T) {
			m := testMount(t, readOnly, nil, func(m *mounted) {
				m.file(t, "a.qcow2", 1024, 0o644)
				m.file(t, "sub/b.qcow2", 1024, 0o644)
			})
			want := syscall.EPERM
			if readOnly {
				want = syscall.EROFS
			}
			p := m.path
			calls := []struct {
				name string
				call func() error
			}{
				{"mkdir in the root", func() error { return unix.Mkdir(p("new"), 0o755) }},
				{"mkdir in an image directory", func() error { return unix.Mkdir(p("a.qcow2", "new"), 0o755) }},
				{"rmdir a directory", func() error { return unix.Rmdir(p("sub")) }},
				{"rmdir an image directory", func() error { return unix.Rmdir(p("a.qcow2")) }},
				{"unlink a generated file", func() error { return unix.Unlink(p("a.qcow2", "info.json")) }},
				{"unlink a control file", func() error { return unix.Unlink(p("a.qcow2", "rebase")) }},
				{"unlink in a subdirectory", func() error { return unix.Unlink(p("sub", "b.qcow2", "status")) }},
				{"rename an image directory", func() error { return unix.Rename(p("a.qcow2"), p("c.qcow2")) }},
				{"rename into a directory", func() error { return unix.Rename(p("a.qcow2"), p("sub", "a.qcow2")) }},
				{"rename a generated file", func() error { return unix.Rename(p("a.qcow2", "info.json"), p("a.qcow2", "x.json")) }},
				{"rename over another file", func() error { return unix.Rename(p("a.qcow2", "info.json"), p("a.qcow2", "map.json")) }},
				{"symlink", func() error { return unix.Symlink("a.qcow2", p("link")) }},
				{"hard link", func() error { return unix.Link(p("a.qcow2", "info.json"), p("a.qcow2", "copy.json")) }},
				{"mknod a FIFO", func() error { return unix.Mknod(p("fifo"), unix.S_IFIFO|0o644, 0) }},
				{"create", func() error {
					fd, err := unix.Open(p("a.qcow2", "new"), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
					if err == nil {
						unix.Close(fd)
					}
					return err
				}},
				{"setxattr on an image directory", func() error { return unix.Setxattr(p("a.qcow2"), "user.x", []byte("1"), 0) }},
				{"setxattr on a generated file", func() error { return unix.Setxattr(p("a.qcow2", "info.json"), "user.x", []byte("1"), 0) }},
				{"removexattr", func() error { return unix.Removexattr(p("sub"), "user.x") }},
			}
			for _, c := range calls {
				if err := c.call(); errnoOf(err) != want {
					t.Errorf("%s: %v, want %v", c.name, err, want)
				}
			}
			if got := m.list(t, "."); strings.Join(got, " ") != "a.qcow2 sub" {
				t.Errorf("the root lists %q after the refused calls", got)
			}
			des, err := os.ReadDir(m.dir)
			if err != nil || len(des) != 2 {
				t.Errorf("the image directory holds %d files after the refused calls (%v)", len(des), err)
			}
		})
	}
}

// TestMountedErrnos checks the errno of each refused open, write and change
// of attributes, and that a generated file whose worker fails or refuses
// fails to open with the errno of that error.
func TestMountedErrnos(t *testing.T) {
	open := func(flags int) func(p string) error {
		return func(p string) error {
			fd, err := unix.Open(p, flags|unix.O_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}
	}
	for _, readOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("read-only=%v", readOnly), func(t *testing.T) {
			m := testMount(t, readOnly, nil, func(m *mounted) {
				m.file(t, "a.qcow2", 1024, 0o644)
			})
			denied := syscall.EACCES
			if readOnly {
				denied = syscall.EROFS
			}
			chmod := func(p string) error { return unix.Chmod(p, 0o666) }
			chown := func(p string) error { return unix.Chown(p, 1, 1) }
			truncate := func(size int64) func(p string) error {
				return func(p string) error { return unix.Truncate(p, size) }
			}
			tests := []struct {
				file string
				call func(string) error
				want syscall.Errno // on a mount that can be written
			}{
				{"info.json", open(unix.O_WRONLY), syscall.EACCES},
				{"info.json", open(unix.O_RDWR), syscall.EACCES},
				{"status", open(unix.O_WRONLY | unix.O_TRUNC), syscall.EACCES},
				{"info.json", truncate(0), syscall.EACCES},
				{"info.json", chmod, syscall.EACCES},
				{"rebase", open(unix.O_RDWR), syscall.EACCES},
				{"rebase", truncate(3), syscall.EINVAL},
				{"rebase", truncate(0), 0},
				{"rebase", chmod, syscall.EPERM},
				{"commit", chown, syscall.EPERM},
				{"nothing", open(unix.O_RDONLY), syscall.ENOENT},
			}
			for _, tt := range tests {
				want := tt.want
				if readOnly && tt.file != "nothing" {
					want = syscall.EROFS
					if tt.file == "rebase" || tt.file == "commit" {
						want = syscall.ENOENT // not shown
					}
				}
				if want == syscall.EACCES {
					want = denied
				}
				if err := tt.call(m.path("a.qcow2", tt.file)); errnoOf(err) != want {
					t.Errorf("%s: %v, want %v", tt.file, err, want)
				}
			}
		})
	}

	m := testMount(t, false, nil, func(m *mounted) {
		m.file(t, "a.qcow2", 1024, 0o644)
	})
	var answers []vmmtest.Answer
	for _, f := range vmmtest.Failures {
		answers = append(answers, f.Answer())
	}
	for _, err := range []error{
		errcode.New(errcode.Qcow2Corrupt, "corrupt"),
		errcode.New(errcode.VmdkUnsupported, "unsupported"),
		errcode.New(errcode.BadArguments, "bad arguments"),
		errcode.New(errcode.NotFound, "not found"),
		errcode.New(errcode.DocumentTooLarge, "too large"),
		errcode.New(errcode.RepairUnsupported, "no repair"),
	} {
		answers = append(answers, vmmtest.Answer{Err: err})
	}
	answers = append(answers, mapAnswer(proto.MapEntry{Length: 1})) // not the whole disk
	for i, a := range answers {
		want := syscall.EIO // a result the host refuses: WORKER_PROTOCOL
		if a.Err != nil {
			want = errcode.Of(a.Err).Errno()
		}
		for _, op := range []string{proto.OpMap, proto.OpCheck} {
			m.worker.set(op, "a.qcow2", a)
		}
		// A new state of the file, so that no document is cached.
		if err := os.WriteFile(filepath.Join(m.dir, "a.qcow2"), make([]byte, 1024+i), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"map.json", "map.svg", "check.json"} {
			if f == "check.json" && a.Result != nil {
				continue // a valid check result
			}
			fd, err := unix.Open(m.path("a.qcow2", f), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
			if errnoOf(err) != want {
				t.Errorf("%s when the worker answers %v %s: %v, want %v", f, a.Err, a.Result, err, want)
			}
		}
	}
}

// TestMountedSnapshot checks that an open generated file reads the document
// made at its open to the end, while opens after a change read the new one.
func TestMountedSnapshot(t *testing.T) {
	m := testMount(t, false, nil, func(m *mounted) {
		m.file(t, "a.qcow2", 1024, 0o644)
	})
	for _, name := range []string{"info.json", "chain.json", "map.json", "check.json"} {
		t.Run(name, func(t *testing.T) {
			before := m.read(t, "a.qcow2", name)
			f, err := os.Open(m.path("a.qcow2", name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			head := make([]byte, 10)
			if _, err := io.ReadFull(f, head); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(filepath.Join(m.dir, "a.qcow2"))
			if err != nil {
				t.Fatal(err)
			}
			// A new size: the worker describes a new virtual size.
			if err := os.WriteFile(filepath.Join(m.dir, "a.qcow2"), make([]byte, st.Size()+1), 0o644); err != nil {
				t.Fatal(err)
			}
			after := m.read(t, "a.qcow2", name)
			if after == before && name != "check.json" {
				t.Fatalf("the document did not change with the image:\n%s", after)
			}
			rest, err := io.ReadAll(f)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(head) + string(rest); got != before {
				t.Errorf("the open made before the change read\n%s\nwant\n%s", got, before)
			}
			var fst unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &fst); err != nil || fst.Size != int64(len(before)) {
				t.Errorf("fstat of the open file: size %d, %v; want %d", fst.Size, err, len(before))
			}
		})
	}
}

// TestMountedControl checks what a write to a control file returns: its
// length when the operation succeeded, and otherwise the errno of the
// refusal or of the worker's failure, which status and result.json record;
// and that a second write on one open is refused.
func TestMountedControl(t *testing.T) {
	m := testMount(t, false, map[string]string{"a.qcow2": "base.qcow2"}, func(m *mounted) {
		for _, name := range []string{"a.qcow2", "base.qcow2", "new.qcow2"} {
			m.file(t, name, 1024, 0o644)
		}
	})
	const command = "-u -b new.qcow2 -F qcow2\n"
	ok := vmmtest.Result(`{"mode":"unsafe","clusters_copied":0,"bytes_copied":0,"backing_format":"qcow2"}`)
	type write struct {
		name    string
		command string
		answer  vmmtest.Answer
		want    error // nil for success
		runs    bool  // a worker rebases
	}
	tests := []write{
		{"success", command, ok, nil, true},
		{"bad grammar", "-u --frobnicate\n", ok, errcode.New(errcode.BadArguments, ""), false},
		{"no target", "-u\n", ok, errcode.New(errcode.BadArguments, ""), false},
		{"outside the directory", "-u -b /etc/passwd -F raw\n", ok, errcode.New(errcode.BackingPathOutsideRoot, ""), false},
		{"bad result", command, vmmtest.Result(`{"mode":"safe"}`), errcode.New(errcode.WorkerProtocol, ""), true},
		{"worker refuses", command, vmmtest.Answer{Err: errcode.New(errcode.BackingNameNoRoom, "no room")}, errcode.New(errcode.BackingNameNoRoom, ""), true},
	}
	for _, f := range vmmtest.Failures {
		tests = append(tests, write{f.String(), command, f.Answer(), f.Err(), true})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m.worker.set(proto.OpRebase, "a.qcow2", tt.answer)
			before := m.worker.count(proto.OpRebase, "a.qcow2")
			fd, err := unix.Open(m.path("a.qcow2", "rebase"), unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			n, err := unix.Write(fd, []byte(tt.command))
			var code errcode.Code
			switch {
			case tt.want == nil:
				if err != nil || n != len(tt.command) {
					t.Errorf("write: %d, %v; want %d", n, err, len(tt.command))
				}
			default:
				code = errcode.Of(tt.want)
				if errnoOf(err) != errcode.Of(tt.want).Errno() {
					t.Errorf("write: %v, want %v (%s)", err, errcode.Of(tt.want).Errno(), code)
				}
			}
			if ran := m.worker.count(proto.OpRebase, "a.qcow2") > before; ran != tt.runs {
				t.Errorf("a worker rebased: %v, want %v", ran, tt.runs)
			}
			status, result := m.read(t, "a.qcow2", "status"), m.read(t, "a.qcow2", "result.json")
			var env struct {
				Operation string
				Error     *struct{ Code errcode.Code }
			}
			if err := json.Unmarshal([]byte(result), &env); err != nil || env.Operation != "rebase" || (env.Error == nil) != (code == "") || env.Error != nil && env.Error.Code != code {
				t.Errorf("result.json does not say how the rebase ended (%s): %v\n%s", code, err, result)
			}
			switch {
			case code == "" && status != "ok rebase\n":
				t.Errorf("status %q after a success", status)
			case code != "" && !strings.HasPrefix(status, "failed rebase: "):
				t.Errorf("status %q after a failure", status)
			}
			if _, err := unix.Write(fd, []byte(tt.command+"x")); errnoOf(err) != syscall.EINVAL {
				t.Errorf("a second write on the open file: %v, want EINVAL", err)
			}
		})
	}
}

// mapAnswer is a worker's map of the given rows.
func mapAnswer(rows ...proto.MapEntry) vmmtest.Answer {
	doc, err := json.Marshal(proto.MapRows(rows))
	if err != nil {
		panic(err)
	}
	return vmmtest.Answer{Result: doc}
}
