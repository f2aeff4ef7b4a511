package microvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/microvm/guest"
	"instarfs/vmm/microvm/guestabi"
	"instarfs/vmm/sandboxtest/testworker"
)

// tcg returns a TCG sandbox on the guest `make guest` built, or skips when
// QEMU or the guest is missing (make test installs and builds both).
func tcg(t *testing.T) *Sandbox {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "build", "guest"))
	if err != nil {
		t.Fatal(err)
	}
	s := &Sandbox{Accel: TCG, GuestDir: dir}
	if _, _, err := s.Available(); err != nil {
		t.Skipf("microvm unavailable (make test installs QEMU and runs make guest): %v", err)
	}
	return s
}

func TestAccelerators(t *testing.T) {
	for _, tc := range []struct {
		accel, want string
	}{
		{"", KVM},
		{KVM, KVM},
		{TCG, TCG},
	} {
		if got := (&Sandbox{Accel: tc.accel}).Accelerator(); got != tc.want {
			t.Errorf("Accel %q: Accelerator() = %q, want %q", tc.accel, got, tc.want)
		}
	}
	_, _, err := (&Sandbox{Accel: "hvf"}).Available()
	if errcode.Of(err) != errcode.BadArguments {
		t.Errorf("unknown accelerator: %v, want BAD_ARGUMENTS", err)
	}
	if _, err := os.Stat("/dev/kvm"); os.IsNotExist(err) {
		_, _, err := (&Sandbox{}).Available()
		if errcode.Of(err) != errcode.SandboxUnavailable || !strings.Contains(err.Error(), "/dev/kvm") {
			t.Errorf("kvm without /dev/kvm: %v, want SANDBOX_UNAVAILABLE naming /dev/kvm", err)
		}
	}
	if got := vmm.Accelerator(vmm.Limit(&Sandbox{Accel: TCG}, 1)); got != TCG {
		t.Errorf("vmm.Accelerator through Limit = %q, want tcg", got)
	}
}

func TestResultDrive(t *testing.T) {
	f, err := memfd("test", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := []byte(`{"result":{}}` + "\n")
	if _, err := f.WriteAt(guest.EncodeResult(out, []int64{-1, 393216}), 0); err != nil {
		t.Fatal(err)
	}
	got, lengths, ok := readResultDrive(f, 2)
	if !ok || !bytes.Equal(got, out) || len(lengths) != 2 || lengths[0] != -1 || lengths[1] != 393216 {
		t.Fatalf("read back %q %v %v", got, lengths, ok)
	}
	if _, _, ok := readResultDrive(f, 3); ok {
		t.Error("a drive with 2 lengths read as one with 3")
	}
	f.WriteAt(guest.EncodeOverflow([]int64{-1, 4096}), 0)
	if got, lengths, ok := readResultDrive(f, 2); !ok || got != nil || lengths[1] != 4096 {
		t.Errorf("overflow read back as %q %v %v", got, lengths, ok)
	}
	f.WriteAt([]byte("XXXX"), 0)
	if _, _, ok := readResultDrive(f, 2); ok {
		t.Error("a drive without the magic was read")
	}
}

func TestReadConsole(t *testing.T) {
	p := guestabi.ConsolePrefix
	console := "[    0.1] kernel noise\n" +
		p + guestabi.Ready + "\r\n" +
		"noise " + p + `{"progress":0.5}` + "\n" +
		strings.Repeat("x", maxConsoleLine+10) + p + `{"progress":0.6}` + "\n" +
		p + `{"result":{}}` + "\n" +
		p + guestabi.Done + "\n" +
		p + "unterminated"
	ready, finished := make(chan struct{}), make(chan struct{})
	tail := &tailBuffer{max: 64}
	var progress []float64
	lines := readConsole(strings.NewReader(console), ready, finished, tail, func(f float64) { progress = append(progress, f) })
	if len(progress) != 1 || progress[0] != 0.5 {
		t.Errorf("progress %v, want [0.5] (the 0.6 line is too long)", progress)
	}
	got := string(bytes.Join(lines, nil))
	want := `{"progress":0.5}` + "\n" + `{"result":{}}` + "\n"
	if got != want {
		t.Errorf("lines %q, want %q", got, want)
	}
	for name, c := range map[string]chan struct{}{"ready": ready, "finished": finished} {
		select {
		case <-c:
		default:
			t.Errorf("%s not closed", name)
		}
	}
	if !strings.HasSuffix(string(tail.buf), "unterminated") || len(tail.buf) > 64 {
		t.Errorf("tail %q", tail.buf)
	}
}

// TestSettle checks how the host applies the lengths a guest reports: within
// the drive they set the file's length; outside it they are refused and the
// file gets its length from before the run back.
func TestSettle(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reported int64
		want     int64
		code     errcode.Code
	}{
		{"grown", 5 << 20, 5 << 20, ""},
		{"shrunk", 4096, 4096, ""},
		{"not opened", -1, 1 << 20, ""},
		{"past the drive", 1 << 40, 1 << 20, errcode.WorkerProtocol},
		{"negative", -2, 1 << 20, errcode.WorkerProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "img"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.Truncate(1 << 20)
			job := vmm.Job{Request: proto.Request{Images: []proto.ImageRef{{Name: "img", Writable: true}}}, Files: []*os.File{f}}
			m := &machine{sizes: []int64{1 << 20}}
			if err := m.makeRoom(job); err != nil {
				t.Fatal(err)
			}
			if st, _ := f.Stat(); st.Size() != m.room[0] || m.room[0] < 1<<20+minRoom {
				t.Fatalf("room: file %d bytes, drive %d", st.Size(), m.room[0])
			}
			err = m.settle(job, []int64{tc.reported})
			if errcode.Of(err) != tc.code && !(tc.code == "" && err == nil) {
				t.Fatalf("settle: %v, want %q", err, tc.code)
			}
			if st, _ := f.Stat(); st.Size() != tc.want {
				t.Fatalf("length %d, want %d", st.Size(), tc.want)
			}
		})
	}
}

// TestQEMUConfined checks QEMU from the host while a session's guest runs:
// it is not root (as root, it runs as a uid of the jail's worker range), it
// has no capabilities, its seccomp sandbox is on, and its namespaces are not
// the host's.
func TestQEMUConfined(t *testing.T) {
	s := tcg(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.init = exe
	sess, err := s.Start(context.Background(), vmm.Job{Request: proto.Request{Op: testworker.OpSession}, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	pid := sess.Pid()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	uid := strings.Fields(fields["Uid"])
	if len(uid) == 0 || uid[0] == "0" {
		t.Errorf("QEMU runs as uid %q", fields["Uid"])
	}
	if os.Geteuid() == 0 {
		if n, _ := strconv.Atoi(uid[0]); n < 0x70000000 || n >= 0x7ffe0000 {
			t.Errorf("QEMU of a root host runs as uid %d, outside the workers' range", n)
		}
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if k != "CapBnd" && fields[k] != "0000000000000000" {
			t.Errorf("QEMU's %s is %s", k, fields[k])
		}
	}
	if fields["Seccomp"] != "2" || fields["NoNewPrivs"] != "1" {
		t.Errorf("QEMU has Seccomp %q, NoNewPrivs %q; want 2 and 1 (-sandbox on)", fields["Seccomp"], fields["NoNewPrivs"])
	}
	for _, ns := range []string{"user", "mnt", "pid", "net", "ipc", "uts", "cgroup"} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err1 != nil || err2 != nil || mine == its {
			t.Errorf("QEMU's %s namespace %q, the host's %q (%v, %v)", ns, its, mine, err1, err2)
		}
	}
	// The session still works.
	reply := make([]byte, 16)
	if n, err := sess.Call(context.Background(), []byte(testworker.FrameEcho+"hi"), reply); err != nil || string(reply[:n]) != "hi" {
		t.Errorf("call: %q, %v", reply[:n], err)
	}
}

// TestBootDeadline checks that a guest that does not say it runs by the boot
// deadline is stopped and reported as SANDBOX_UNAVAILABLE, by Run and by
// Start: how a /dev/kvm that does not boot stock kernels fails fast.
func TestBootDeadline(t *testing.T) {
	s := tcg(t)
	s.deadline = 50 * time.Millisecond
	job := vmm.Job{Request: proto.Request{Op: proto.OpNoop}, Timeout: time.Minute}
	for name, run := range map[string]func() error{
		"Run": func() error { _, err := s.Run(context.Background(), job); return err },
		"Start": func() error {
			sess, err := s.Start(context.Background(), job)
			if err == nil {
				sess.Close()
			}
			return err
		},
	} {
		start := time.Now()
		err := run()
		if errcode.Of(err) != errcode.SandboxUnavailable || !strings.Contains(err.Error(), "did not start within 50ms") {
			t.Errorf("%s: %v, want SANDBOX_UNAVAILABLE saying the guest did not start", name, err)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("%s took %v", name, d)
		}
	}
}
