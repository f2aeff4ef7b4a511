// Package guest is the /init of the microvm guest: the instarfs worker running
// as the first process of a small virtual machine.
//
// Main loads the virtio modules the initramfs carries, mounts devtmpfs for the
// drives, opens the image drives at the descriptors the worker expects,
// confines itself as the jail's worker does (without namespaces), serves the
// request the host appended to the initramfs, and writes the worker's output
// to the result drive. Ending pid 1 stops the machine (panic=-1, -no-reboot).
package guest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/jail"
	"instarfs/vmm/microvm/guestabi"
	"instarfs/vmm/worker"
)

// driveWait bounds how long /init waits for the drives to appear.
const driveWait = 10 * time.Second

// Drive returns the device path of the i-th virtio-blk drive (vda, vdb, ...).
func Drive(i int) string { return fmt.Sprintf("/dev/vd%c", 'a'+i) }

// Main runs the guest with the product's worker. It never returns.
func Main() { Run(worker.Serve, worker.DeviceLengths) }

// Run runs the guest: it sets the machine up, confines itself, and serves the
// request with serve, which reads the request from its reader and writes
// protocol lines to its writer. lengths, when not nil, reports the length
// the worker left each image at (worker.DeviceLengths); nil reports none.
// The conformance tests run their own worker through it. It never returns.
func Run(serve func(io.Reader, io.Writer) int, lengths func() []int64) {
	reserveDescriptors()
	console := os.Stdout
	say := func(line string) { io.WriteString(console, "\n"+guestabi.ConsolePrefix+line+"\n") }
	say(guestabi.Ready)
	fail := func(err error) {
		b, _ := json.Marshal(proto.Message{Error: asError(err)})
		say(string(b))
		os.Exit(1)
	}
	if err := setup(); err != nil {
		fail(err)
	}
	if _, err := os.Stat(guestabi.RequestPath); os.IsNotExist(err) {
		runSession(serve, fail)
	}
	req, raw, err := readRequest()
	if err != nil {
		fail(err)
	}
	result, kept, err := openDrives(req, true)
	if err != nil {
		fail(err)
	}
	mode := jail.SeccompKill
	if req.Op == proto.OpSandboxProbe {
		mode = jail.SeccompErrno // the probes report each refusal
	}
	if _, err := jail.ConfineGuest(kept, mode); err != nil {
		fail(err)
	}
	reported := func() []int64 {
		if lengths != nil {
			return lengths()
		}
		none := make([]int64, len(req.Images)+len(req.Drives))
		for i := range none {
			none[i] = -1
		}
		return none
	}
	out := &headBuffer{max: proto.MaxResultBytes + 1} // the host refuses more
	out.full = func() {
		// As the jail's host kills a worker that writes too much.
		writeResult(result, EncodeOverflow(reported()))
		say(guestabi.Done)
		os.Exit(1)
	}
	code := serve(bytes.NewReader(raw), io.MultiWriter(out, &consoleLines{w: console}))
	if err := writeResult(result, EncodeResult(out.buf, reported())); err != nil {
		fmt.Fprintf(os.Stderr, "instarfs guest: %v\n", err) // the console copy remains
	}
	say(guestabi.Done)
	os.Exit(code)
}

// asError makes a setup failure a protocol error: the guest could not
// become a worker, so the sandbox is unavailable.
func asError(err error) *errcode.Error {
	return errcode.New(errcode.SandboxUnavailable, "microvm guest: %v", err)
}

// maxDrives bounds the drives a guest takes: the images and the result drive.
const maxDrives = 32

// reserveDescriptors holds the descriptor numbers the drives will take
// (proto.FirstImageFD..) with copies of the console, before the Go runtime
// opens its own descriptors (the netpoller's) there. openDrives replaces them;
// the confinement closes those left over.
func reserveDescriptors() {
	for fd := proto.FirstImageFD; fd < proto.FirstImageFD+maxDrives; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			continue // taken already; openDrives checks what it replaces
		}
		unix.Dup3(0, fd, 0)
	}
}

// setup mounts devtmpfs (the drives), proc and sysfs, and loads the modules.
func setup() error {
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mounting devtmpfs: %w", err)
	}
	// The confinement lists /proc/self/fd to close stray descriptors.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, ""); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mounting proc: %w", err)
	}
	// A session finds its port by name there.
	os.Mkdir("/sys", 0o555)
	if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, ""); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mounting sysfs: %w", err)
	}
	order, err := os.ReadFile(guestabi.ModulesOrder)
	if err != nil {
		return fmt.Errorf("reading the module list: %w", err)
	}
	for _, name := range strings.Fields(string(order)) {
		if err := loadModule(path.Join(guestabi.ModulesDir, name)); err != nil {
			return err
		}
	}
	return nil
}

func loadModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("loading module: %w", err)
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(file, ".xz") || strings.HasSuffix(file, ".zst") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && err != unix.EEXIST {
		return fmt.Errorf("loading module %s: %w", path.Base(file), err)
	}
	return nil
}

func readRequest() (*proto.Request, []byte, error) {
	raw, err := os.ReadFile(guestabi.RequestPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the request: %w", err)
	}
	var req proto.Request
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, nil, fmt.Errorf("decoding the request: %w", err)
	}
	return &req, raw, nil
}

// runSession serves a session (see guestabi.SessionPort): the images at
// proto.FirstImageFD.., the session's shared memory after them (the guest's
// own: the host cannot see it, so shared replies go inline), the port after
// that. It never returns.
func runSession(serve func(io.Reader, io.Writer) int, fail func(error)) {
	port, err := openPort()
	if err != nil {
		fail(err)
	}
	pr := &worker.PortReader{FD: port}
	r := bufio.NewReaderSize(pr, 64<<10)
	line, err := r.ReadSlice('\n')
	if err != nil {
		fail(fmt.Errorf("reading the session's request: %w", err))
	}
	line = bytes.Clone(line)
	var req proto.Request
	if err := json.Unmarshal(line, &req); err != nil {
		fail(fmt.Errorf("decoding the session's request: %w", err))
	}
	if _, _, err := openDrives(&req, false); err != nil {
		fail(err)
	}
	sharedFD := proto.FirstImageFD + len(req.Images)
	shared, err := sharedMemory(sharedFD, req.Shared)
	if err != nil {
		fail(err)
	}
	portFD := sharedFD + 1
	if err := unix.Dup3(port, portFD, unix.O_CLOEXEC); err != nil {
		fail(fmt.Errorf("placing the port at descriptor %d: %w", portFD, err))
	}
	unix.Close(port)
	pr.FD = portFD
	if _, err := jail.ConfineGuest(len(req.Images)+2, jail.SeccompKill); err != nil {
		fail(err)
	}
	out := &sessionOutput{w: worker.FDWriter(portFD), shared: shared}
	code := serve(io.MultiReader(bytes.NewReader(line), r), out)
	os.Exit(code)
}

// openPort opens the virtio-serial port named guestabi.SessionPort.
func openPort() (int, error) {
	deadline := time.Now().Add(driveWait)
	for {
		ports, _ := os.ReadDir("/sys/class/virtio-ports")
		for _, p := range ports {
			name, err := os.ReadFile(path.Join("/sys/class/virtio-ports", p.Name(), "name"))
			if err == nil && strings.TrimSpace(string(name)) == guestabi.SessionPort {
				fd, err := unix.Open(path.Join("/dev", p.Name()), unix.O_RDWR|unix.O_CLOEXEC, 0)
				if err != nil {
					return -1, fmt.Errorf("opening the session port: %w", err)
				}
				return fd, nil
			}
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("the session port did not appear within %v", driveWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sharedMemory makes the session's shared memory at descriptor fd (where
// proto.WorkerShared finds it) and maps it; size 0 makes none.
func sharedMemory(fd, size int) ([]byte, error) {
	if size <= 0 {
		return nil, nil
	}
	m, err := unix.MemfdCreate("instarfs-session", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(m, int64(size)); err != nil {
		return nil, fmt.Errorf("sizing the shared memory: %w", err)
	}
	if m != fd {
		if err := unix.Dup3(m, fd, unix.O_CLOEXEC); err != nil {
			return nil, fmt.Errorf("placing the shared memory at descriptor %d: %w", fd, err)
		}
		unix.Close(m)
	}
	return unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// sessionOutput passes a session worker's output to the port: protocol lines
// up to the final one, then reply frames, each FrameShared reply turned into
// a FrameOK one that carries the shared memory's bytes.
type sessionOutput struct {
	w       io.Writer
	shared  []byte
	frames  bool   // past the final line
	pending []byte // an incomplete line or frame header
	body    int    // bytes of the current frame's body still to pass on
}

func (o *sessionOutput) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if o.body > 0 {
			k := min(o.body, len(p))
			if _, err := o.w.Write(p[:k]); err != nil {
				return 0, err
			}
			o.body -= k
			p = p[k:]
			continue
		}
		if !o.frames {
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				o.pending = append(o.pending, p...)
				break
			}
			line := append(o.pending, p[:i+1]...)
			o.pending, p = nil, p[i+1:]
			var m proto.Message
			if json.Unmarshal(line, &m) == nil && (m.Result != nil || m.Error != nil) {
				o.frames = true
			}
			if _, err := o.w.Write(line); err != nil {
				return 0, err
			}
			continue
		}
		k := min(5-len(o.pending), len(p))
		o.pending, p = append(o.pending, p[:k]...), p[k:]
		if len(o.pending) < 5 {
			break
		}
		hdr := o.pending
		o.pending = nil
		size := int(binary.BigEndian.Uint32(hdr[1:]))
		frame := hdr
		if hdr[0] == proto.FrameShared && size <= len(o.shared) {
			frame = append([]byte{proto.FrameOK}, hdr[1:]...)
			frame = append(frame, o.shared[:size]...)
		} else if hdr[0] != proto.FrameShared {
			o.body = size
		}
		if _, err := o.w.Write(frame); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// openDrives opens the image drives at proto.FirstImageFD.., the broker's
// port at req.BrokerFD() and the drives attached for it after that
// (req.BrokerPort), and, when result is set, returns the result drive, which
// follows them on the machine and is placed after them. It returns the
// number of descriptors from proto.FirstImageFD on that the worker keeps.
func openDrives(req *proto.Request, result bool) (int, int, error) {
	var targets []int // drive i of the machine goes to targets[i]
	var writable []bool
	for i, im := range req.Images {
		targets, writable = append(targets, proto.FirstImageFD+i), append(writable, im.Writable)
	}
	next := proto.FirstImageFD + len(req.Images)
	if req.BrokerPort {
		next = req.BrokerFD() + 1
		for k, im := range req.Drives {
			targets, writable = append(targets, next+k), append(writable, im.Writable)
		}
		next += len(req.Drives)
	} else if len(req.Drives) > 0 {
		return -1, 0, fmt.Errorf("drives for a broker without a port")
	}
	if result {
		targets, writable = append(targets, next), append(writable, true)
		next++
	}
	if len(targets) > maxDrives || next > proto.FirstImageFD+maxDrives {
		return -1, 0, fmt.Errorf("%d drives, more than the guest takes (%d)", len(targets), maxDrives)
	}
	deadline := time.Now().Add(driveWait)
	for i := range targets {
		for {
			if _, err := os.Stat(Drive(i)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return -1, 0, fmt.Errorf("%s did not appear within %v", Drive(i), driveWait)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for i, target := range targets {
		flags := unix.O_RDONLY
		if writable[i] {
			flags = unix.O_RDWR
		}
		fd, err := unix.Open(Drive(i), flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, 0, fmt.Errorf("opening %s: %w", Drive(i), err)
		}
		if err := place(fd, target, Drive(i)); err != nil {
			return -1, 0, err
		}
	}
	if req.BrokerPort {
		port, err := openPort()
		if err != nil {
			return -1, 0, err
		}
		if err := place(port, req.BrokerFD(), "the broker's port"); err != nil {
			return -1, 0, err
		}
	}
	// The result drive is the guest's own, not an image handed to the worker.
	resultFD := -1
	if result {
		resultFD = next - 1
		if _, err := unix.FcntlInt(uintptr(resultFD), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return -1, 0, err
		}
	}
	for fd := next; fd < proto.FirstImageFD+maxDrives; fd++ {
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			unix.Close(fd) // a placeholder of reserveDescriptors
		}
	}
	return resultFD, next - proto.FirstImageFD, nil
}

// place moves descriptor fd to target, which must hold a placeholder of
// reserveDescriptors or nothing, and keeps it open across exec.
func place(fd, target int, what string) error {
	if flags, err := unix.FcntlInt(uintptr(target), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC != 0 && fd != target {
		return fmt.Errorf("descriptor %d, which %s must take, is in use", target, what)
	}
	if fd == target {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
		return err
	}
	if err := unix.Dup3(fd, target, 0); err != nil {
		return fmt.Errorf("placing %s at descriptor %d: %w", what, target, err)
	}
	unix.Close(fd)
	return nil
}

// writeResult writes a result drive's layout and flushes it.
func writeResult(fd int, layout []byte) error {
	if _, err := unix.Pwrite(fd, layout, 0); err != nil {
		return fmt.Errorf("writing the result drive: %w", err)
	}
	return unix.Fsync(fd)
}

// EncodeResult lays out the result drive (see guestabi.ResultMagic).
func EncodeResult(out []byte, lengths []int64) []byte {
	return encodeResult(uint32(len(out)), out, lengths)
}

// EncodeOverflow lays out the result drive of a worker that wrote too much
// (see guestabi.ResultOverflow).
func EncodeOverflow(lengths []int64) []byte {
	return encodeResult(guestabi.ResultOverflow, nil, lengths)
}

func encodeResult(n uint32, out []byte, lengths []int64) []byte {
	b := make([]byte, 8, 8+len(out)+4+8*len(lengths))
	copy(b, guestabi.ResultMagic)
	binary.LittleEndian.PutUint32(b[4:], n)
	b = append(b, out...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(lengths)))
	for _, n := range lengths {
		b = binary.LittleEndian.AppendUint64(b, uint64(n))
	}
	return b
}

// headBuffer keeps the first max bytes written to it, and calls full once it
// has them: a worker that writes more than the host accepts is stopped.
type headBuffer struct {
	buf  []byte
	max  int
	full func() // called once max bytes are kept
}

func (b *headBuffer) Write(p []byte) (int, error) {
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	if len(b.buf) >= b.max && b.full != nil {
		b.full()
	}
	return len(p), nil
}

// maxConsoleLine bounds the lines copied to the console: a serial console is
// slow under TCG, and the result drive carries every line anyway.
const maxConsoleLine = 64 << 10

// consoleLines copies protocol lines to the console, each after
// guestabi.ConsolePrefix, so that the host can pick them out from kernel messages.
type consoleLines struct {
	w       io.Writer
	partial []byte
}

func (c *consoleLines) Write(p []byte) (int, error) {
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		if i < maxConsoleLine {
			c.w.Write(append([]byte("\n"+guestabi.ConsolePrefix), c.partial[:i+1]...))
		}
		c.partial = c.partial[i+1:]
	}
	return len(p), nil
}
