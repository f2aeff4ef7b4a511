package integration

import (
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The disk benchmarks read the reference image (see bench_test.go) through
// MOUNT/ref.qcow2/disk and through qemu-storage-daemon's FUSE export of the
// same image, side by side. ns/op is instarfs's time, qsd-ns/op
// qemu-storage-daemon's, and x-qsd the ratio (below 1: instarfs is faster).
//
//	go test ./integration -run XXX -bench Disk -benchtime 5x

// qsdExport exports image (in dir, with no backing file: the daemon is told
// not to open one) read-only through qemu-storage-daemon's FUSE export, and
// returns the exported file.
func qsdExport(b *testing.B, dir, image string) string {
	b.Helper()
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		b.Skip("qemu-storage-daemon not found (Debian: qemu-system-common; make bench installs it)")
	}
	export := filepath.Join(b.TempDir(), "export")
	if err := os.WriteFile(export, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("qemu-storage-daemon",
		"--blockdev", `{"driver":"file","node-name":"f0","filename":"`+filepath.Join(dir, image)+`","read-only":true}`,
		"--blockdev", `{"driver":"qcow2","node-name":"q0","file":"f0","backing":null,"read-only":true}`,
		"--export", "type=fuse,id=e0,node-name=q0,mountpoint="+export+",writable=off")
	out := &limitedBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if isMounted(export) {
			syscall.Unmount(export, syscall.MNT_DETACH)
		}
	})
	for deadline := time.Now().Add(15 * time.Second); !isMounted(export); {
		if time.Now().After(deadline) {
			b.Fatalf("qemu-storage-daemon did not export %s:\n%s", image, out.buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return export
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	buf []byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(l.buf); room > 0 {
		l.buf = append(l.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// uncached opens path with the kernel's cached pages of it dropped.
func uncached(b *testing.B, path string) *os.File {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	return f
}

// readAll reads path from start to end in 1 MiB reads, as cp and cat do on
// a file whose st_blksize is 1 MiB, and returns how long it took.
func readAll(b *testing.B, path string, buf []byte) time.Duration {
	b.Helper()
	f := uncached(b, path)
	defer f.Close()
	start := time.Now()
	for {
		_, err := io.ReadFull(f, buf)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// BenchmarkDiskSequential reads the whole disk (2 GiB) sequentially, with a
// cold worker (it ended after its idle time) and the image's file in the
// host's page cache.
func BenchmarkDiskSequential(b *testing.B) {
	dir, image := benchSetup(b)
	idle := 200 * time.Millisecond
	m := mount(b, dir, nil, "--read-only", "--disk-idle="+idle.String())
	export := qsdExport(b, dir, image)
	disk := m.path(image, "disk")
	buf := make([]byte, 1<<20)
	readAll(b, disk, buf) // the image file into the host's page cache
	var ours, qsd time.Duration
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		time.Sleep(idle + 300*time.Millisecond) // the worker ends
		qsd += readAll(b, export, buf)
		b.StartTimer()
		ours += readAll(b, disk, buf)
		b.StopTimer()
	}
	b.SetBytes(benchVirtualSize)
	b.ReportMetric(float64(qsd.Nanoseconds())/float64(b.N), "qsd-ns/op")
	b.ReportMetric(float64(ours)/float64(qsd), "x-qsd")
}

// BenchmarkDiskRandom4k reads 2000 random 4 KiB blocks of the disk (data
// and holes), uncached, with a warm worker.
func BenchmarkDiskRandom4k(b *testing.B) {
	dir, image := benchSetup(b)
	m := mount(b, dir, nil, "--read-only")
	export := qsdExport(b, dir, image)
	const reads = 2000
	rng := rand.New(rand.NewPCG(7, 7))
	offs := make([]int64, reads)
	for i := range offs {
		offs[i] = rng.Int64N(benchVirtualSize/4096) * 4096
	}
	random := func(path string) time.Duration {
		f := uncached(b, path)
		defer f.Close()
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
		buf := make([]byte, 4096)
		start := time.Now()
		for _, off := range offs {
			if _, err := f.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	random(m.path(image, "disk")) // start the worker
	var ours, qsd time.Duration
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		qsd += random(export)
		b.StartTimer()
		ours += random(m.path(image, "disk"))
		b.StopTimer()
	}
	b.ReportMetric(float64(qsd.Nanoseconds())/float64(b.N), "qsd-ns/op")
	b.ReportMetric(float64(ours)/float64(qsd), "x-qsd")
	b.ReportMetric(float64(ours.Microseconds())/float64(b.N*reads), "us/read")
}
