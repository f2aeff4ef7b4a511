package integration

import (
	"bytes"
	endian "encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// writeSnapshots makes dir/file a 4 MiB qcow2 with n internal snapshots,
// the i-th with id i+1 and name name(i), all naming the active L1 table.
func writeSnapshots(t *testing.T, dir, file string, n int, name func(i int) string) {
	t.Helper()
	shellIn(t, dir, "qemu-img create -q -f qcow2 "+file+" 4M")
	p := openPatcher(t, filepath.Join(dir, file))
	defer p.close()
	l1, l1Size := p.be64At(40), p.be32At(36)
	var table bytes.Buffer
	for i := range n {
		id, sname := strconv.Itoa(i+1), name(i)
		var e [56]byte
		endian.BigEndian.PutUint64(e[0:], l1)
		endian.BigEndian.PutUint32(e[8:], l1Size)
		endian.BigEndian.PutUint16(e[12:], uint16(len(id)))
		endian.BigEndian.PutUint16(e[14:], uint16(len(sname)))
		endian.BigEndian.PutUint32(e[16:], uint32(1700000000+i)) // date
		endian.BigEndian.PutUint64(e[24:], uint64(i)*1e9)        // vm clock
		endian.BigEndian.PutUint32(e[36:], 16)                   // extra data: vm state size, disk size
		endian.BigEndian.PutUint64(e[48:], 4<<20)
		table.Write(e[:])
		table.WriteString(id + sname)
		table.Write(make([]byte, (8-(len(id)+len(sname))%8)%8))
	}
	at := (p.size() + 0xffff) &^ 0xffff
	p.write(at, table.Bytes())
	p.be64(64, uint64(at))
	p.be32(60, uint32(n))
}

// writeSharedL2 makes dir/name a qcow2 whose one L2 table names the same data
// cluster in every entry and is named by each of l1Entries L1 entries: a file
// of a few hundred kilobytes whose map has a row per cluster of a virtual
// disk of l1Entries × 512 MiB.
func writeSharedL2(t *testing.T, dir, name string, l1Entries int) {
	t.Helper()
	shellIn(t, dir, "qemu-img create -q -f qcow2 "+name+" 64M && qemu-io -c 'write -P 0x11 0 64k' "+name)
	p := openPatcher(t, filepath.Join(dir, name))
	defer p.close()
	const copied = uint64(1) << 63
	l1 := int64(p.be64At(40))
	l2 := p.be64At(l1) &^ copied
	data := p.be64At(int64(l2))
	p.write(int64(l2), bytes.Repeat(endian.BigEndian.AppendUint64(nil, data), 65536/8))
	p.write(l1, bytes.Repeat(endian.BigEndian.AppendUint64(nil, l2|copied), l1Entries))
	p.be32(36, uint32(l1Entries))
	p.be64(24, uint64(l1Entries)<<29)
}

// TestMountMemoryBounded attacks the mount's memory with images made to be
// expensive to describe, read again and again: a qcow2 with 65,536 snapshots
// touched between reads (each touch a new file state, so a new probe result
// and a new info.json), and 16 copies of a small qcow2 whose map would be
// tens of megabytes, read concurrently. The daemon's peak resident size must
// follow its cache budget, not the number of reads or images; the oversize
// map must fail with EFBIG, and fail at once when read again; no more workers
// than --workers may run at once.
func TestMountMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds images whose documents are tens of megabytes")
	}
	const (
		touches = 24
		copies  = 16
		workers = 3
		maxHWM  = 256 << 20 // bytes: unbounded, the reads took 4 GiB
	)
	dir := t.TempDir()
	// 65,536 snapshots: a file of a few megabytes whose info.json is tens.
	writeSnapshots(t, dir, "snaps.qcow2", 65536, func(i int) string { return fmt.Sprintf("snap%d", i) })
	writeSharedL2(t, dir, "shared.qcow2", 76)
	shared, err := os.ReadFile(filepath.Join(dir, "shared.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < copies; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("shared-%02d.qcow2", i)), shared, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := mount(t, dir, nil, "--cache-size=32MiB", fmt.Sprintf("--workers=%d", workers))
	status := func(field string) int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					t.Fatalf("%s: %v", l, err)
				}
				return kb << 10
			}
		}
		t.Fatalf("no %s in /proc/PID/status", field)
		return 0
	}

	start := time.Now()
	snaps := filepath.Join(dir, "snaps.qcow2")
	for i := range touches {
		when := time.Unix(1700000000+int64(i), 0)
		if err := os.Chtimes(snaps, when, when); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(m.path("snaps.qcow2", "info.json"))
		if err != nil {
			t.Fatalf("touch %d: info.json: %v", i, err)
		}
		if n := bytes.Count(b, []byte(`"vm-state-size"`)); n != 65536 {
			t.Fatalf("touch %d: info.json lists %d snapshots, want 65536", i, n)
		}
	}
	t.Logf("%d touches and reads of info.json: %v, VmHWM %d MiB, VmRSS %d MiB", touches, time.Since(start).Round(time.Millisecond), status("VmHWM")>>20, status("VmRSS")>>20)

	// Two rounds of concurrent reads of every copy's map.json: the first
	// runs at most `workers` workers at once, the second none (the refusal
	// is remembered).
	for round, want := range [][2]int{{2, workers}, {0, 0}} {
		start := time.Now()
		stop := make(chan struct{})
		most := make(chan int)
		go func() { most <- mostChildren(m.cmd.Process.Pid, stop) }()
		var wg sync.WaitGroup
		for i := range copies {
			name := "shared.qcow2"
			if i > 0 {
				name = fmt.Sprintf("shared-%02d.qcow2", i)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := os.ReadFile(m.path(name, "map.json")); !errors.Is(err, syscall.EFBIG) {
					t.Errorf("round %d: %s/map.json: %v, want EFBIG", round, name, err)
				}
			}()
		}
		wg.Wait()
		close(stop)
		n := <-most
		t.Logf("round %d: %d concurrent reads of map.json: %v, at most %d workers at once, VmHWM %d MiB",
			round, copies, time.Since(start).Round(time.Millisecond), n, status("VmHWM")>>20)
		if n < want[0] || n > want[1] {
			t.Errorf("round %d: %d workers ran at once, want %d to %d", round, n, want[0], want[1])
		}
	}
	if !strings.Contains(m.stderr.String(), "DOCUMENT_TOO_LARGE") {
		t.Errorf("the log does not name DOCUMENT_TOO_LARGE:\n%s", m.stderr)
	}
	hwm := status("VmHWM")
	t.Logf("peak resident size of the mount: %d MiB (bound %d MiB)", hwm>>20, maxHWM>>20)
	if hwm > maxHWM {
		t.Errorf("the mount's peak resident size is %d MiB, more than %d MiB", hwm>>20, maxHWM>>20)
	}

	// A document the worker does not bound (info.json) is capped by the
	// mount itself.
	small := mount(t, dir, nil, "--max-document-size=1MiB")
	if _, err := os.ReadFile(small.path("snaps.qcow2", "info.json")); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("info.json of 65,536 snapshots under a 1 MiB cap: %v, want EFBIG", err)
	}
	if _, err := os.ReadFile(small.path("shared.qcow2", "info.json")); err != nil {
		t.Errorf("a small info.json under a 1 MiB cap: %v", err)
	}
}

// mostChildren counts the child processes of pid every few milliseconds until
// stop is closed, and returns the most it saw at once.
func mostChildren(pid int, stop <-chan struct{}) int {
	most := 0
	want := " " + strconv.Itoa(pid) + " "
	for {
		select {
		case <-stop:
			return most
		default:
		}
		n := 0
		procs, _ := filepath.Glob("/proc/[0-9]*/stat")
		for _, p := range procs {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			// pid (comm) state ppid ...: comm may hold spaces, so start
			// after its closing parenthesis.
			if i := bytes.LastIndexByte(b, ')'); i >= 0 && strings.HasPrefix(string(b[i+1:]), " "+string(b[i+2])+want) {
				n++
			}
		}
		most = max(most, n)
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOversizeProbe reads an image whose description is larger than a worker
// may send: 1,000 snapshots named by 60,000 control characters each (60 MB
// of snapshot table, six times that in JSON). The worker must say
// IMAGE_TOO_LARGE rather than overflow its output; the mount shows the image,
// its info.json fails with EFBIG, and reading it again starts no worker.
func TestOversizeProbe(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 60 MB image")
	}
	dir := t.TempDir()
	name := strings.Repeat("\x01", 60000)
	writeSnapshots(t, dir, "long.qcow2", 1000, func(int) string { return name })

	r := runBounded(t, dir, 2*time.Minute, "info", "--output=json", "long.qcow2")
	if r.code == 0 || errorCode(r.stderr) != "IMAGE_TOO_LARGE" {
		t.Errorf("instarfs info: exit %d, %s; want IMAGE_TOO_LARGE", r.code, r.stderr)
	}

	m := mount(t, dir, nil)
	for round, want := range []int{1, 0} {
		stop := make(chan struct{})
		most := make(chan int)
		go func() { most <- mostChildren(m.cmd.Process.Pid, stop) }()
		_, err := os.ReadFile(m.path("long.qcow2", "info.json"))
		close(stop)
		if !errors.Is(err, syscall.EFBIG) {
			t.Errorf("round %d: info.json: %v, want EFBIG", round, err)
		}
		if n := <-most; n > want {
			t.Errorf("round %d: %d workers ran, want at most %d", round, n, want)
		}
	}
}
