// Package microvm is the sandbox backend that runs the worker in a QEMU
// microvm: a virtual machine of its own, with the worker as its /init (package
// guest), built by `make guest`.
//
// The host hands QEMU the image descriptors it opened (-add-fd, /dev/fdset/N)
// as format=raw virtio-blk drives, read-only unless the operation writes the
// image, so QEMU never parses an image format and never opens an image by
// name. The request goes in a small initramfs appended to the guest's; the
// worker's output comes back on a result drive, with the console as fallback,
// and is decoded by the same code as the jail's (vmm.DecodeOutput).
//
// KVM is the default accelerator and is never replaced silently: without a
// /dev/kvm that opens and a guest that answers within BootDeadline, Run fails
// with SANDBOX_UNAVAILABLE. TCG runs only when asked for (--accel=tcg); it
// exists for tests on hosts without KVM and is not a security boundary.
package microvm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/jail"
	"instarfs/vmm/microvm/guestabi"
	"instarfs/vmm/microvm/initramfs"
)

// Files of the guest directory that `make guest` writes.
const (
	KernelFile    = "kernel" // the ELF vmlinux, booted by its PVH entry; else the bzImage
	InitramfsFile = "initramfs.cpio"
)

// Accelerators.
const (
	KVM = "kvm"
	TCG = "tcg"
)

// EnvGuestDir names the guest directory; without it, the backend looks for
// build/guest next to the directory of the running executable
// (bin/instarfs → build/guest) and in the working directory.
const EnvGuestDir = "INSTARFS_GUEST_DIR"

// QEMU is the emulator the backend runs.
const QEMU = "qemu-system-x86_64"

// Boot deadlines: how long the guest's /init may take to say it runs. Under
// KVM a guest boots in well under a second; one that has not answered in
// seconds runs on a /dev/kvm that does not boot stock kernels (a nested
// hypervisor such as PVM). TCG is slow, so its deadline only catches a hang.
const (
	BootDeadlineKVM = 10 * time.Second
	BootDeadlineTCG = 60 * time.Second
)

// stopGrace is how long a guest that has written its result may take to stop.
const stopGrace = 5 * time.Second

// Guest resources.
const (
	memory          = "1G" // touched pages only; the jail's worker may use 8 GiB
	resultDriveSize = proto.MaxResultBytes + 1<<20
	maxConsoleBytes = proto.MaxResultBytes + 1<<20
	maxConsoleLine  = 128 << 10 // the guest copies lines up to 64 KiB
)

// Sandbox is the microvm backend. Set Accel before the first Run.
type Sandbox struct {
	// Accel is KVM (the default when empty) or TCG.
	Accel string
	// GuestDir holds KernelFile and InitramfsFile; empty means GuestDir().
	GuestDir string
	// Log receives the guest's warnings and diagnostics.
	Log logrus.FieldLogger

	warnMu sync.Mutex
	warned map[string]bool

	noNamespaces atomic.Bool // the kernel refused them to QEMU

	// init, when set, replaces the guest's /init for the conformance tests,
	// whose test binary is their worker.
	init string
	// deadline, when set, replaces the boot deadline, for tests.
	deadline time.Duration
	// boots counts the guests Run started, for tests.
	boots atomic.Int64
}

func init() {
	vmm.Register("microvm", func() (vmm.Sandbox, error) { return &Sandbox{}, nil })
}

// Name returns "microvm".
func (s *Sandbox) Name() string { return "microvm" }

// Accelerator returns the accelerator Run uses.
func (s *Sandbox) Accelerator() string {
	if s.Accel == "" {
		return KVM
	}
	return s.Accel
}

// GuestDir finds the guest directory (see EnvGuestDir).
func GuestDir() string {
	if d := os.Getenv(EnvGuestDir); d != "" {
		return d
	}
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(filepath.Dir(exe)), "build", "guest"))
	}
	candidates = append(candidates, filepath.Join("build", "guest"))
	for _, d := range candidates {
		if _, err := os.Stat(filepath.Join(d, KernelFile)); err == nil {
			return d
		}
	}
	return candidates[len(candidates)-1]
}

func unavailable(format string, args ...any) error {
	return errcode.New(errcode.SandboxUnavailable, "microvm: "+format, args...)
}

// Available checks what Run needs before it boots anything: QEMU, the guest
// files and, for KVM, a /dev/kvm that opens.
func (s *Sandbox) Available() (qemu, dir string, err error) {
	switch s.Accelerator() {
	case KVM:
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", "", unavailable("--accel=kvm needs /dev/kvm: %v (use --accel=tcg only for tests: TCG is no security boundary)", err)
		}
		f.Close()
	case TCG:
	default:
		return "", "", errcode.New(errcode.BadArguments, "unknown accelerator %q (kvm or tcg)", s.Accel)
	}
	qemu, err = exec.LookPath(QEMU)
	if err != nil {
		return "", "", unavailable("%s is not installed (Debian package qemu-system-x86)", QEMU)
	}
	dir = s.GuestDir
	if dir == "" {
		dir = GuestDir()
	}
	for _, f := range []string{KernelFile, InitramfsFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return "", "", unavailable("the guest is not built (%v): run make guest", err)
		}
	}
	return qemu, dir, nil
}

// admit refuses a job before anything boots: ctx already done, or
// descriptors that do not match the request's images.
func admit(ctx context.Context, job vmm.Job) error {
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return errcode.New(errcode.WorkerTimeout, "the deadline passed before the worker started")
		}
		return errcode.New(errcode.Cancelled, "operation cancelled")
	}
	if len(job.Files) != len(job.Request.Images) {
		return errcode.New(errcode.Internal, "job has %d image descriptors for %d images",
			len(job.Files), len(job.Request.Images))
	}
	return nil
}

// Run boots a guest for job and returns the worker's result.
func (s *Sandbox) Run(ctx context.Context, job vmm.Job) (json.RawMessage, error) {
	if err := admit(ctx, job); err != nil {
		return nil, err
	}
	qemu, dir, err := s.Available()
	if err != nil {
		return nil, err
	}
	if job.Broker == nil {
		return s.bootOnce(ctx, qemu, dir, job, nil)
	}
	r := newRelay(job)
	start := time.Now()
	res, err := s.bootOnce(ctx, qemu, dir, job, r)
	if err != errBootAgain {
		return res, err
	}
	// The two boots share the job's time.
	if job.Timeout <= 0 {
		job.Timeout = vmm.DefaultTimeout
	}
	if job.Timeout -= time.Since(start); job.Timeout <= 0 {
		return nil, errcode.New(errcode.WorkerTimeout, "the worker did not finish within its time: the first guest took it all")
	}
	r.bootAgain()
	return s.bootOnce(ctx, qemu, dir, job, r)
}

// bootOnce boots a guest for job, whose broker r relays when it is set.
func (s *Sandbox) bootOnce(ctx context.Context, qemu, dir string, job vmm.Job, r *relay) (json.RawMessage, error) {
	vm, err := s.prepare(dir, job, false, r)
	if err != nil {
		return nil, err
	}
	defer vm.close()
	return s.boot(ctx, qemu, vm, vm.job)
}

// Start boots a guest for a long-lived worker session (the mount's disk
// file). The session speaks over a virtio-serial port that QEMU connects to
// its standard input and output, so the host side is vmm.Process's, with
// QEMU as the process; the console goes to QEMU's standard error, where the
// host finds how the worker ended. The guest keeps the session's shared
// memory to itself and sends shared replies inline. Sessions take no
// writable images: a guest cannot grow a file.
func (s *Sandbox) Start(ctx context.Context, job vmm.Job) (*vmm.Session, error) {
	if err := admit(ctx, job); err != nil {
		return nil, err
	}
	for _, im := range job.Request.Images {
		if im.Writable {
			return nil, errcode.New(errcode.Internal, "a microvm session cannot write an image (%s)", im.Name)
		}
	}
	qemu, dir, err := s.Available()
	if err != nil {
		return nil, err
	}
	m, err := s.prepare(dir, job, true, nil)
	if err != nil {
		return nil, err
	}
	defer m.close() // QEMU has its own copies
	job.Request = m.request
	console := &tailBuffer{max: consoleTail}
	consoleDone, booted := make(chan struct{}), make(chan struct{})
	go func() {
		io.Copy(&readyWatch{w: console, ready: booted}, m.console)
		m.console.Close()
		close(consoleDone)
	}()
	// A guest that has not said it runs by the boot deadline is stopped, as
	// in Run: a /dev/kvm that does not boot stock kernels fails fast.
	var bootFailed atomic.Bool
	watchBoot := func(pid int) {
		select {
		case <-booted:
		case <-consoleDone:
		case <-time.After(s.bootDeadline()):
			bootFailed.Store(true)
			syscall.Kill(pid, syscall.SIGKILL) // not yet waited for: Start is reading its ready line
		}
	}
	ended := func(ws syscall.WaitStatus, qemuStderr []byte) (syscall.WaitStatus, []byte) {
		select {
		case <-consoleDone:
		case <-time.After(time.Second):
		}
		ws, stderr := guestEnded(ws, console.Bytes())
		return ws, append(qemuStderr, stderr...)
	}
	var sess *vmm.Session
	err = s.contained(func(attr *syscall.SysProcAttr, release func()) error {
		p := &vmm.Process{
			Path:        qemu,
			Args:        append([]string{QEMU}, m.args...),
			Log:         s.Log,
			Warn:        s.warnOnce,
			Inherit:     m.files,
			Ended:       ended,
			SysProcAttr: attr,
			Exited:      release,
			Started: func(pid int) {
				m.consoleW.Close() // QEMU has its own
				go watchBoot(pid)
			},
		}
		var err error
		sess, err = p.Start(ctx, job)
		return err
	})
	if err != nil && bootFailed.Load() {
		return nil, s.bootError()
	}
	return sess, err
}

// bootDeadline is how long a guest may take to say it runs.
func (s *Sandbox) bootDeadline() time.Duration {
	if s.deadline > 0 {
		return s.deadline
	}
	if s.Accelerator() == TCG {
		return BootDeadlineTCG
	}
	return BootDeadlineKVM
}

// bootError says that a guest did not start within the boot deadline.
func (s *Sandbox) bootError() error {
	if s.Accelerator() == KVM {
		return unavailable("/dev/kvm opens, but the guest did not start within %v: this KVM does not boot a stock kernel (a nested hypervisor such as PVM?)", BootDeadlineKVM)
	}
	return unavailable("the guest did not start within %v under %s", s.bootDeadline(), s.Accelerator())
}

// readyWatch passes the console on to w and closes ready once the guest's
// /init has said it runs.
type readyWatch struct {
	w     io.Writer
	ready chan struct{}
	seen  []byte // the console so far, until ready
}

func (r *readyWatch) Write(p []byte) (int, error) {
	if r.ready != nil {
		r.seen = append(r.seen, p...)
		if bytes.Contains(r.seen, []byte(guestabi.ConsolePrefix+guestabi.Ready)) {
			close(r.ready)
			r.ready, r.seen = nil, nil
		} else if len(r.seen) > maxConsoleLine {
			r.seen = r.seen[len(r.seen)-len(guestabi.ConsolePrefix+guestabi.Ready):]
		}
	}
	return r.w.Write(p)
}

// contained calls start with the attributes that start QEMU as the jail
// starts its worker (jail.Contained): unprivileged, in fresh namespaces, or
// without them once the kernel has refused them. release gives QEMU's uid
// back after it has exited; start calls it when QEMU does not start.
func (s *Sandbox) contained(start func(attr *syscall.SysProcAttr, release func()) error) error {
	groups := s.deviceGroups()
	for {
		namespaces := !s.noNamespaces.Load()
		attr, _, release := jail.Contained(namespaces, groups...)
		err := start(attr, release)
		if err == nil || !namespaces || !jail.NamespacesRefused(err) {
			return err
		}
		s.noNamespaces.Store(true)
		s.warnOnce(fmt.Sprintf("the kernel refused namespaces for QEMU (%v); it runs without them", err))
	}
}

// deviceGroups returns the groups QEMU keeps so that, started as a uid of its
// own by a root host, it can open /dev/kvm: the device's group when the device
// is not open to everyone. Started by another user, QEMU keeps that user's
// groups anyway, and so needs none.
func (s *Sandbox) deviceGroups() []uint32 {
	if s.Accelerator() != KVM || os.Geteuid() != 0 {
		return nil
	}
	var st unix.Stat_t
	if unix.Stat("/dev/kvm", &st) != nil || st.Mode&0o006 == 0o006 || st.Mode&0o060 != 0o060 {
		return nil
	}
	return []uint32{st.Gid}
}

// guestEnded finds in the console how the guest's pid 1, the worker, ended:
// the kernel's panic names its wait status. Without it, QEMU's own status
// stands.
func guestEnded(ws syscall.WaitStatus, console []byte) (syscall.WaitStatus, []byte) {
	if status, ok := initExit(console); ok {
		ws = syscall.WaitStatus(status)
	}
	return ws, WorkerStderr(console)
}

// machine is one run's QEMU command line and the descriptors it inherits.
type machine struct {
	job     vmm.Job       // with the drives the relay attaches as images
	request proto.Request // with the images' sizes
	relay   *relay        // the broker's, over a port
	args    []string
	files   []*os.File // inherited, from fd 3 on
	owned   []*os.File // opened here, closed after the run
	result  *os.File
	// A session's console: QEMU writes consoleW, the host reads console.
	console, consoleW *os.File
	sizes             []int64 // of the writable images before the run; -1 for the others
	room              []int64 // the writable images' lengths with their room: the drives' sizes
}

// Room past a writable image's end: a block device cannot grow, so the host
// extends the file (sparse) before the run and cuts it to the length the
// worker reports after it. An operation writes at most what the other images
// hold, plus metadata; a compressed source can need more, and then the worker
// fails for lack of space, as on a full disk.
const (
	minRoom    = 256 << 20
	roomFactor = 2
)

// makeRoom extends each writable image by the room it may need.
func (m *machine) makeRoom(job vmm.Job) error {
	m.room = nil
	for i, f := range job.Files {
		if m.sizes[i] < 0 {
			m.room = append(m.room, -1)
			continue
		}
		var others int64
		for j, g := range job.Files {
			if j != i {
				if st, err := g.Stat(); err == nil {
					others += st.Size()
				}
			}
		}
		room := max(int64(minRoom), roomFactor*others)
		m.room = append(m.room, m.sizes[i]+room)
		if err := f.Truncate(m.sizes[i] + room); err != nil {
			m.restore(job)
			return errcode.New(errcode.WriteFailed, "making room past the end of %s: %v", job.Request.Images[i].Name, err)
		}
	}
	return nil
}

// restore cuts the writable images back to their sizes before the run, for
// a run in which the guest wrote nothing.
func (m *machine) restore(job vmm.Job) {
	for i, f := range job.Files {
		if m.sizes[i] >= 0 {
			f.Truncate(m.sizes[i])
		}
	}
}

// settle cuts each writable image to the length the worker reported.
func (m *machine) settle(job vmm.Job, lengths []int64) error {
	for i, f := range job.Files {
		if m.sizes[i] < 0 {
			continue
		}
		n := lengths[i]
		switch {
		case n == -1:
			n = m.sizes[i] // the worker did not open it
		case n < 0 || n > m.room[i]:
			m.restore(job)
			return errcode.New(errcode.WorkerProtocol, "the guest reports a length of %d for %s, outside its drive (%d bytes)",
				n, job.Request.Images[i].Name, m.room[i])
		}
		if err := f.Truncate(n); err != nil {
			return errcode.New(errcode.WriteFailed, "setting the length of %s to %d: %v", job.Request.Images[i].Name, n, err)
		}
	}
	return nil
}

func (m *machine) close() {
	for _, f := range m.owned {
		f.Close()
	}
}

// inherit adds f to the descriptors QEMU inherits and returns its number there.
func (m *machine) inherit(f *os.File) int {
	m.files = append(m.files, f)
	return 2 + len(m.files)
}

// drive attaches f as the next virtio-blk drive through an fdset. QEMU takes
// from the set the descriptor whose access mode matches what it opens, and
// opens read-only too, so a set always holds a read-only descriptor.
func (m *machine) drive(f *os.File, writable bool) error {
	set := len(m.files) + 1
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return unavailable("reading a drive's access mode: %v", err)
	}
	mode := flags & unix.O_ACCMODE
	if writable && mode != unix.O_RDWR {
		return errcode.New(errcode.Internal, "a writable image was not opened for writing")
	}
	fds := []int{m.inherit(f)}
	if mode != unix.O_RDONLY {
		ro, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return unavailable("reopening a drive read-only for QEMU: %v", err)
		}
		m.owned = append(m.owned, ro)
		fds = append(fds, m.inherit(ro))
	}
	for _, fd := range fds {
		m.args = append(m.args, "-add-fd", fmt.Sprintf("fd=%d,set=%d", fd, set))
	}
	id := fmt.Sprintf("d%d", set)
	// The host holds the image locks on its own descriptions; QEMU's would
	// conflict with them.
	opts := fmt.Sprintf("if=none,id=%s,format=raw,file=/dev/fdset/%d,file.locking=off", id, set)
	if writable {
		opts += ",readonly=off,discard=unmap" // the worker punches holes
	} else {
		opts += ",readonly=on"
	}
	m.args = append(m.args, "-drive", opts, "-device", "virtio-blk-device,drive="+id)
	return nil
}

// prepare makes the QEMU command line of job and the descriptors it needs.
// A session's guest gets no result drive and no request in its initramfs: it
// speaks over a virtio-serial port on QEMU's standard input and output. So
// does the broker of a run with relay r, whose drives follow the job's.
func (s *Sandbox) prepare(dir string, job vmm.Job, session bool, r *relay) (*machine, error) {
	m := &machine{relay: r}
	req := job.Request
	req.Images = append([]proto.ImageRef(nil), req.Images...)
	req.Progress = job.Progress != nil
	images := len(job.Files)
	if r != nil {
		job.Files = append([]*os.File(nil), job.Files...)
		for _, d := range r.drives {
			job.Files = append(job.Files, d.File)
			req.Images = append(req.Images, d.Ref)
		}
		job.Request.Images = req.Images
	}
	m.job = job
	for i, f := range job.Files {
		st, err := f.Stat()
		if err != nil {
			return nil, errcode.New(errcode.ReadFailed, "stat %s: %v", req.Images[i].Name, err)
		}
		req.Images[i].Size = st.Size()
		if req.Images[i].Writable {
			m.sizes = append(m.sizes, st.Size())
		} else {
			m.sizes = append(m.sizes, -1)
		}
		if err := m.drive(f, req.Images[i].Writable); err != nil {
			m.close()
			return nil, err
		}
	}
	if err := m.makeRoom(job); err != nil {
		m.close()
		return nil, err
	}
	if r != nil {
		req.Images, req.Drives = req.Images[:images], req.Images[images:]
		req.Broker, req.BrokerPort = true, true
	}
	m.request = req
	if !session {
		result, err := memfd("instarfs-result", resultDriveSize)
		if err != nil {
			m.close()
			return nil, err
		}
		m.owned, m.result = append(m.owned, result), result
		if err := m.drive(result, true); err != nil {
			m.close()
			return nil, err
		}
	}
	var request *proto.Request
	if !session {
		request = &req
	}
	initrd, err := s.initrd(dir, request)
	if err != nil {
		m.close()
		return nil, err
	}
	m.owned = append(m.owned, initrd)
	initrdFD := m.inherit(initrd)

	accel := s.Accelerator()
	// The machine stops when /init ends: the kernel panics, reboots at once
	// by a triple fault (reboot=t, the one method microvm always has), and
	// -no-reboot makes QEMU exit.
	cmdline := "console=ttyS0 quiet loglevel=1 panic=-1 reboot=t rdinit=/init"
	m.args = append([]string{
		"-M", "microvm", "-accel", accel, "-m", memory, "-smp", "1",
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-kernel", filepath.Join(dir, KernelFile),
		"-initrd", fmt.Sprintf("/proc/self/fd/%d", initrdFD),
	}, m.args...)
	if accel == KVM {
		m.args = append(m.args, "-cpu", "host")
	} else if khz := tscKHz(); khz > 0 {
		// microvm has no timer to calibrate the TSC against; under TCG
		// the calibration races and boots hang without this.
		cmdline += " tsc_early_khz=" + strconv.Itoa(khz)
	}
	if session || r != nil {
		// The console goes to a pipe of its own: QEMU cannot open its
		// standard error by name (a pipe of the host's uid), and an
		// fdset cannot hold a standard stream.
		cr, cw, err := os.Pipe()
		if err != nil {
			m.close()
			return nil, unavailable("%v", err)
		}
		m.owned = append(m.owned, cw) // cr is closed by its reader, at EOF
		m.console, m.consoleW = cr, cw
		set := len(m.files) + 1
		m.args = append(m.args, "-add-fd", fmt.Sprintf("fd=%d,set=%d", m.inherit(cw), set),
			"-chardev", fmt.Sprintf("file,id=console,path=/dev/fdset/%d,append=on" /* not truncated: a pipe */, set), "-serial", "chardev:console",
			"-device", "virtio-serial-device",
			"-chardev", "stdio,id=session,signal=off",
			"-device", "virtserialport,chardev=session,name="+guestabi.SessionPort)
	} else {
		m.args = append(m.args, "-serial", "stdio")
	}
	m.args = append(m.args, "-append", cmdline)
	return m, nil
}

// initrd is the guest's initramfs with the request, when there is one,
// appended.
func (s *Sandbox) initrd(dir string, req *proto.Request) (*os.File, error) {
	base, err := os.ReadFile(filepath.Join(dir, InitramfsFile))
	if err != nil {
		return nil, unavailable("reading the guest: %v", err)
	}
	var buf bytes.Buffer
	buf.Write(base)
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
	w := initramfs.NewWriter(&buf)
	if s.init != "" {
		bin, err := os.ReadFile(s.init)
		if err != nil {
			return nil, unavailable("reading the test /init: %v", err)
		}
		w.File("/init", 0o755, bin) // a later archive's file replaces an earlier one's
	}
	if req != nil {
		body, err := json.Marshal(req)
		if err != nil {
			return nil, errcode.New(errcode.Internal, "encoding the worker request: %v", err)
		}
		w.File(guestabi.RequestPath, 0o644, body)
	}
	if err := w.Close(); err != nil {
		return nil, errcode.New(errcode.Internal, "writing the request archive: %v", err)
	}
	f, err := memfd("instarfs-initrd", 0)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return nil, unavailable("writing the initramfs: %v", err)
	}
	return f, nil
}

func memfd(name string, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, unavailable("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if size > 0 {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, unavailable("sizing %s: %v", name, err)
		}
	}
	return f, nil
}

// tscKHz is the host's TSC frequency estimate from /proc/cpuinfo, or 0.
func tscKHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}

// boot runs QEMU and collects the worker's output.
func (s *Sandbox) boot(ctx context.Context, qemu string, m *machine, job vmm.Job) (json.RawMessage, error) {
	timeout := job.Timeout
	if timeout <= 0 {
		timeout = vmm.DefaultTimeout
	}
	bootDeadline := s.bootDeadline()
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		return nil, unavailable("%v", err)
	}
	defer stdout.Close()
	// With a relay, QEMU's standard input and output are the broker's port
	// and the console comes on a pipe of its own.
	var stdin, stdinW *os.File
	console := stdout
	if m.relay != nil {
		if stdin, stdinW, err = os.Pipe(); err != nil {
			stdoutW.Close()
			return nil, unavailable("%v", err)
		}
		defer stdinW.Close()
		console = m.console
	}
	var stderr bytes.Buffer
	var cmd *exec.Cmd
	var releaseUID func()
	start := time.Now()
	err = s.contained(func(attr *syscall.SysProcAttr, release func()) error {
		cmd = &exec.Cmd{
			Path:        qemu,
			Args:        append([]string{QEMU}, m.args...),
			Env:         []string{},
			Dir:         "/",
			Stdin:       stdin,
			Stdout:      stdoutW,
			Stderr:      &limitedBuffer{buf: &stderr, max: vmm.MaxStderrBytes},
			ExtraFiles:  m.files,
			SysProcAttr: attr,
		}
		err := cmd.Start()
		if err != nil {
			release()
		}
		releaseUID = release
		return err
	})
	stdoutW.Close()
	if err == nil {
		s.boots.Add(1)
	}
	if stdin != nil {
		stdin.Close()
		m.consoleW.Close() // QEMU has its own
	}
	if err != nil {
		return nil, unavailable("starting %s: %v", QEMU, err)
	}
	ready, finished := make(chan struct{}), make(chan struct{})
	var lines [][]byte
	tail := &tailBuffer{max: consoleTail}
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		lines = readConsole(console, ready, finished, tail, job.Progress)
	}()
	relayDone := make(chan struct{})
	if m.relay != nil {
		go func() {
			defer close(relayDone)
			m.relay.serve(stdout, stdinW, func() { cmd.Process.Kill() })
		}()
	} else {
		close(relayDone)
	}
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		releaseUID()
		exited <- err
	}()

	bootTimer := time.NewTimer(bootDeadline)
	defer bootTimer.Stop()
	runTimer := time.NewTimer(timeout)
	defer runTimer.Stop()
	var stop error
	var waitErr error
	booted := false
loop:
	for {
		select {
		case waitErr = <-exited:
			break loop
		case <-ready:
			ready = nil
			booted = true
			bootTimer.Stop()
			s.logger().WithField("boot", time.Since(start)).Debug("microvm guest ready")
		case <-finished:
			// The result drive is written; a machine that does not stop
			// soon after is stopped.
			finished = nil
			runTimer.Reset(stopGrace)
		case <-bootTimer.C:
			if !booted {
				stop = s.bootError()
				cmd.Process.Kill()
			}
		case <-runTimer.C:
			if finished == nil {
				cmd.Process.Kill()
				continue
			}
			stop = errcode.New(errcode.WorkerTimeout, "the worker did not finish within %v", timeout)
			cmd.Process.Kill()
		case <-ctx.Done():
			stop = errcode.New(errcode.Cancelled, "operation cancelled")
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				stop = errcode.New(errcode.WorkerTimeout, "the worker did not finish before the deadline")
			}
			cmd.Process.Kill()
		}
	}
	<-consoleDone
	<-relayDone
	if m.relay != nil {
		if err := m.relay.failure(); err != nil {
			m.restore(job)
			return nil, err
		}
		if m.relay.again {
			m.restore(job) // the first guest writes nothing
			return nil, errBootAgain
		}
	}
	if !booted {
		m.restore(job) // the guest wrote nothing
	}
	if stop != nil {
		return nil, stop
	}
	status, initEnded := initExit(tail.buf)
	var out []byte
	written := false
	if o, lengths, ok := readResultDrive(m.result, len(job.Files)); ok {
		if err := m.settle(job, lengths); err != nil {
			return nil, err
		}
		if o == nil {
			return nil, errcode.New(errcode.WorkerProtocol, "invalid worker output: more than %d bytes of output", proto.MaxResultBytes)
		}
		out, written = o, true
	} else if len(lines) > 0 {
		out, written = bytes.Join(lines, nil), true
	}
	if written {
		// Progress came over the console as it happened.
		res, err := vmm.DecodeOutput(bytes.NewReader(out), nil, s.warnOnce)
		var final *errcode.Error
		noResult := errors.As(err, &final) && final.Code == errcode.WorkerCrashed && !vmm.HasFinalLine(out)
		switch {
		case noResult:
			// Say how the worker ended, below.
		case err != nil || !initEnded || status == 0:
			return res, err
		default:
			return nil, errcode.New(errcode.WorkerCrashed, "the worker %s after writing its result", describeStatus(status))
		}
	} else if booted && slices.ContainsFunc(m.sizes, func(n int64) bool { return n >= 0 }) {
		s.logger().Warn("sandbox microvm: the guest stopped without reporting the images' lengths; writable images keep zeros past their end")
	}
	msg := "the guest stopped without a result"
	if initEnded {
		msg = "the worker " + describeStatus(status) + " without a result"
	} else if waitErr != nil {
		msg = fmt.Sprintf("%s exited (%v) without a result", QEMU, waitErr)
	}
	if !booted {
		msg += " before its /init started"
	}
	if e := strings.TrimSpace(stderr.String()); e != "" {
		msg += "; QEMU's stderr: " + e
	}
	if e := vmm.StderrSummary(WorkerStderr(tail.buf)); e != "" {
		msg += "; stderr: " + e
	}
	msg = strings.Map(printable, msg)
	switch {
	case booted && bytes.Contains(tail.buf, []byte(killedBySIGSYS)):
		return nil, errcode.New(errcode.SandboxViolation,
			"the worker made a system call that the sandbox forbids and was killed (SIGSYS)")
	case !booted && s.Accelerator() == KVM:
		return nil, unavailable("/dev/kvm opens, but KVM did not boot the guest (this host's KVM may be a nested hypervisor such as PVM, which runs only its own guest kernels): %s", msg)
	case !booted:
		// QEMU or the kernel failed, not the worker.
		return nil, unavailable("%s", msg)
	}
	return nil, errcode.New(errcode.WorkerCrashed, "%s", msg)
}

// WorkerStderr is what the worker wrote to its standard error, out of the
// console: the console up to the kernel's panic at the end of pid 1, without
// the guest's own marked lines.
func WorkerStderr(console []byte) []byte {
	if i := bytes.LastIndex(console, []byte(kernelPanic)); i >= 0 {
		console = console[:bytes.LastIndexByte(console[:i], '\n')+1]
	}
	var b []byte
	for _, l := range bytes.SplitAfter(console, []byte("\n")) {
		switch strings.TrimSpace(string(l)) {
		case strings.TrimSpace(guestabi.ConsolePrefix + guestabi.Ready), strings.TrimSpace(guestabi.ConsolePrefix + guestabi.Done):
		default:
			b = append(b, l...)
		}
	}
	return b
}

// kernelPanic starts the kernel's message when pid 1 ends.
const kernelPanic = "Kernel panic - not syncing"

// readResultDrive returns the output the guest wrote (nil when the worker
// wrote too much: guestabi.ResultOverflow) and the lengths of the images, if it
// wrote them.
func readResultDrive(f *os.File, images int) ([]byte, []int64, bool) {
	var hdr [8]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil || string(hdr[:4]) != guestabi.ResultMagic {
		return nil, nil, false
	}
	n := int64(binary.LittleEndian.Uint32(hdr[4:]))
	overflow := n == guestabi.ResultOverflow
	if overflow {
		n = 0
	}
	if n > resultDriveSize-8-4-8*int64(images) {
		return nil, nil, false
	}
	out := make([]byte, n+4+8*int64(images))
	if _, err := f.ReadAt(out, 8); err != nil {
		return nil, nil, false
	}
	trailer := out[n:]
	if binary.LittleEndian.Uint32(trailer) != uint32(images) {
		return nil, nil, false
	}
	lengths := make([]int64, images)
	for i := range lengths {
		lengths[i] = int64(binary.LittleEndian.Uint64(trailer[4+8*i:]))
	}
	if overflow {
		return nil, lengths, true
	}
	return append([]byte{}, out[:n]...), lengths, true
}

// readConsole reads the serial console until EOF. It closes ready when the
// guest's /init says it runs and finished when it says it has written the
// result drive, delivers progress lines as they come, and returns the
// protocol lines the guest copied there, each with its newline. Lines longer
// than the reader's buffer are dropped.
func readConsole(r io.Reader, ready, finished chan struct{}, tail *tailBuffer, progress func(float64)) [][]byte {
	br := bufio.NewReaderSize(r, maxConsoleLine)
	var lines [][]byte
	total, long := 0, false
	for {
		line, err := br.ReadSlice('\n')
		tail.Write(line)
		if err == bufio.ErrBufferFull {
			long = true
			continue
		}
		if err != nil {
			io.Copy(io.Discard, r)
			return lines
		}
		if long {
			long = false
			continue
		}
		i := bytes.Index(line, []byte(guestabi.ConsolePrefix))
		if i < 0 {
			continue
		}
		body := bytes.TrimRight(line[i+len(guestabi.ConsolePrefix):], "\r\n")
		switch string(body) {
		case guestabi.Ready:
			if ready != nil {
				close(ready)
				ready = nil
			}
		case guestabi.Done:
			if finished != nil {
				close(finished)
				finished = nil
			}
		default:
			if total += len(body) + 1; total <= maxConsoleBytes {
				lines = append(lines, append(bytes.Clone(body), '\n'))
			}
			if msg, err := vmm.DecodeMessage(body); err == nil && msg.Progress != nil && progress != nil {
				progress(*msg.Progress)
			}
		}
	}
}

func (s *Sandbox) logger() logrus.FieldLogger {
	if s.Log != nil {
		return s.Log
	}
	return logrus.StandardLogger()
}

func (s *Sandbox) warnOnce(msg string) {
	s.warnMu.Lock()
	if s.warned == nil {
		s.warned = map[string]bool{}
	}
	seen := s.warned[msg]
	s.warned[msg] = true
	s.warnMu.Unlock()
	if !seen {
		s.logger().Warnf("sandbox microvm: %s", msg)
	}
}

// initExit finds the kernel's panic at the end of pid 1 in the console and
// returns the wait status it shows.
func initExit(console []byte) (int, bool) {
	const marker = "Attempted to kill init! exitcode=0x"
	i := bytes.LastIndex(console, []byte(marker))
	if i < 0 {
		return 0, false
	}
	rest := console[i+len(marker):]
	n := 0
	for n < len(rest) && n < 8 && strings.IndexByte("0123456789abcdef", rest[n]) >= 0 {
		n++
	}
	v, err := strconv.ParseUint(string(rest[:n]), 16, 32)
	if err != nil {
		return 0, false
	}
	return int(v), true
}

// describeStatus says how a wait status ended the worker.
func describeStatus(status int) string {
	if sig := status & 0x7f; sig != 0 {
		return fmt.Sprintf("was killed by signal %d (%v)", sig, syscall.Signal(sig))
	}
	return fmt.Sprintf("exited with status %d", status>>8)
}

// killedBySIGSYS is the kernel's panic when the seccomp filter killed the
// worker, pid 1 of the guest (exit code: signal 31).
const killedBySIGSYS = "Attempted to kill init! exitcode=0x0000001f"

// consoleTail is how much of the console's end the host keeps.
const consoleTail = 16 << 10

// tailBuffer keeps the last max bytes written to it. It is safe for one
// writer and concurrent readers (Bytes).
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

// Bytes returns a copy of what is kept.
func (b *tailBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf)
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

// printable replaces control characters in text from QEMU or the guest.
func printable(r rune) rune {
	if r < ' ' || r == 0x7f {
		return ' '
	}
	return r
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
