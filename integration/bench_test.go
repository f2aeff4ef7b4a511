package integration

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The benchmarks run instarfs and qemu-img on the reference image of DESIGN §8
// (2 GiB virtual, 384 MiB of data in scattered 64 KiB clusters) in the same
// run. ns/op is instarfs's wall-clock time per command; qemu-ns/op is
// qemu-img's and x-qemu the ratio of the two (below 1: instarfs is faster);
// cpu-ns/op and qemu-cpu-ns/op are the CPU times (user and system, the worker
// included).
//
//	go test ./integration -run XXX -bench . -benchtime 20x

const (
	benchVirtualSize = 2 << 30
	benchCluster     = 64 << 10
	benchDataBytes   = 384 << 20
)

var (
	benchOnce  sync.Once
	benchDir   string
	benchImage string
	benchErr   error
)

// benchSetup builds the reference image once per run: a sparse raw file
// written by Go, converted by qemu-img.
func benchSetup(b *testing.B) (dir, image string) {
	b.Helper()
	benchOnce.Do(func() {
		benchDir, benchErr = os.MkdirTemp(filepath.Dir(binary), "bench-") // removed with the harness's directory
		if benchErr != nil {
			return
		}
		raw := filepath.Join(benchDir, "src.raw")
		benchErr = writeScatteredRaw(raw)
		if benchErr != nil {
			return
		}
		benchImage = "ref.qcow2"
		cmd := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, benchImage)
		cmd.Dir = benchDir
		if out, err := cmd.CombinedOutput(); err != nil {
			benchErr = err
			b.Logf("%s", out)
			return
		}
		benchErr = os.Remove(raw)
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchDir, benchImage
}

// writeScatteredRaw writes benchDataBytes of pseudo-random 64 KiB clusters at
// pseudo-random cluster positions of a sparse raw file of benchVirtualSize.
func writeScatteredRaw(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(benchVirtualSize); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	clusters := rng.Perm(benchVirtualSize / benchCluster)[:benchDataBytes/benchCluster]
	buf := make([]byte, benchCluster)
	for _, c := range clusters {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, int64(c)*benchCluster); err != nil {
			return err
		}
	}
	return f.Close()
}

func BenchmarkInfo(b *testing.B)  { benchCommand(b, "info", "--output=json") }
func BenchmarkMap(b *testing.B)   { benchCommand(b, "map", "--output=json") }
func BenchmarkCheck(b *testing.B) { benchCommand(b, "check", "--output=json") }

// benchCommand times `instarfs args... IMAGE` b.N times, then qemu-img with
// the same arguments as many times with the timer stopped, and reports the
// ratio.
func benchCommand(b *testing.B, args ...string) {
	dir, image := benchSetup(b)
	args = append(args, image)
	// run returns the wall-clock and the CPU time (user and system, children
	// included) of one run. CPU time does not depend on how busy the machine
	// is; the sandbox's worker makes instarfs's wall-clock time more
	// sensitive to that than qemu-img's.
	run := func(name string) (wall, cpu time.Duration) {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s %v: %v\n%.1000s", name, args, err, out)
		}
		wall = time.Since(start)
		return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	run("qemu-img") // warm the page cache
	b.ResetTimer()
	var oursCPU time.Duration
	for range b.N {
		_, cpu := run(binary)
		oursCPU += cpu
	}
	b.StopTimer()
	var qemu, qemuCPU time.Duration
	for range b.N {
		wall, cpu := run("qemu-img")
		qemu += wall
		qemuCPU += cpu
	}
	n := float64(b.N)
	b.ReportMetric(float64(qemu.Nanoseconds())/n, "qemu-ns/op")
	b.ReportMetric(float64(b.Elapsed())/float64(qemu), "x-qemu")
	b.ReportMetric(float64(oursCPU.Nanoseconds())/n, "cpu-ns/op")
	b.ReportMetric(float64(qemuCPU.Nanoseconds())/n, "qemu-cpu-ns/op")
}
