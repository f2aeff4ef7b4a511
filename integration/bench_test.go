package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// The benchmarks run instarfs and qemu-img on a reference image
// (2 GiB virtual, 384 MiB of data in scattered 64 KiB clusters) in the same
// run, alternating. ns/op is instarfs's mean wall-clock time per command;
// med-ns and qemu-med-ns are the medians of instarfs's and qemu-img's, and
// x-qemu the ratio of the medians (below 1: instarfs is faster); cpu-ns/op
// and qemu-cpu-ns/op are the CPU times (user and system, the worker
// included); starts/op counts the workers a command started and worker-MiB
// is the largest peak RSS of any of them (both from instarfs's debug log).
//
// BenchmarkRebaseSafe, BenchmarkRebaseUnsafe and BenchmarkCommit change
// images: they run on the rest of the reference set (an overlay rewriting a
// quarter of the clusters, a new base differing in a few MiB), each run on
// fresh copies made outside the timer.
//
//	go test ./integration -run XXX -bench 'Info|Map|Check' -benchtime 20x
//	go test ./integration -run XXX -bench 'Rebase|Commit' -benchtime 5x

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
	var m benchMeasure
	b.ResetTimer()
	for range b.N {
		m.ours(b, dir, args...)
		b.StopTimer()
		wall, cpu := run("qemu-img")
		m.qemu = append(m.qemu, wall)
		m.qemuCPU += cpu
		b.StartTimer()
	}
	b.StopTimer()
	m.report(b)
}

// benchMeasure collects the runs of one benchmark.
type benchMeasure struct {
	wall, qemu   []time.Duration
	cpu, qemuCPU time.Duration
	starts       int
	maxRSSKiB    int64
}

// ours runs instarfs with args in dir, with its debug log on stderr, and
// records its wall-clock and CPU time, the workers it started and their
// largest peak RSS.
func (m *benchMeasure) ours(b *testing.B, dir string, args ...string) {
	b.Helper()
	cmd := exec.Command(binary, append([]string{"--log-level=debug", "--log-format=json"}, args...)...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("instarfs %v: %v\n%.1000s", args, err, stderr.Bytes())
	}
	m.wall = append(m.wall, time.Since(start))
	m.cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	for _, line := range bytes.Split(stderr.Bytes(), []byte("\n")) {
		var l struct {
			Msg    string `json:"msg"`
			MaxRSS int64  `json:"maxrss_kib"`
		}
		if json.Unmarshal(line, &l) == nil && l.Msg == "sandbox worker ended" {
			m.starts++
			m.maxRSSKiB = max(m.maxRSSKiB, l.MaxRSS)
		}
	}
}

func (m *benchMeasure) report(b *testing.B) {
	n := float64(len(m.wall))
	med, qmed := median(m.wall), median(m.qemu)
	b.ReportMetric(float64(med.Nanoseconds()), "med-ns")
	b.ReportMetric(float64(qmed.Nanoseconds()), "qemu-med-ns")
	b.ReportMetric(float64(med)/float64(qmed), "x-qemu")
	b.ReportMetric(float64(m.cpu.Nanoseconds())/n, "cpu-ns/op")
	b.ReportMetric(float64(m.qemuCPU.Nanoseconds())/n, "qemu-cpu-ns/op")
	b.ReportMetric(float64(m.starts)/n, "starts/op")
	b.ReportMetric(float64(m.maxRSSKiB)/1024, "worker-MiB")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// The changing benchmarks run on the rest of the reference set: an overlay of
// the reference image rewriting a quarter of its clusters, and a new base
// that differs from the reference image in a few MiB.
const (
	benchOverlay = "ov.qcow2"
	benchNewBase = "newbase.qcow2"
)

var (
	benchChainOnce sync.Once
	benchChainErr  error
)

// benchChainSetup builds the overlay and the new base once per run, both by
// qemu-img convert from a raw file written by Go, the overlay by qemu-io.
func benchChainSetup(b *testing.B) (dir string) {
	b.Helper()
	dir, image := benchSetup(b)
	benchChainOnce.Do(func() {
		benchChainErr = buildBenchChain(dir, image)
	})
	if benchChainErr != nil {
		b.Fatal(benchChainErr)
	}
	return dir
}

func buildBenchChain(dir, image string) error {
	convert := func(args ...string) error {
		cmd := exec.Command("qemu-img", append([]string{"convert"}, args...)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img convert %v: %v\n%s", args, err, out)
		}
		return nil
	}
	raw := filepath.Join(dir, "chain.raw")
	if err := convert("-f", "qcow2", "-O", "raw", image, raw); err != nil {
		return err
	}
	f, err := os.OpenFile(raw, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// The same cluster positions as writeScatteredRaw.
	rng := rand.New(rand.NewPCG(1, 2))
	clusters := rng.Perm(benchVirtualSize / benchCluster)[:benchDataBytes/benchCluster]
	rng = rand.New(rand.NewPCG(3, 4))
	fill := func(p []byte) {
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
	}

	// The new base: 5 MiB of the data overwritten, 3 MiB zeroed and 2 MiB
	// written into holes (MiBs without data), 1 MiB at a time.
	const mib = 1 << 20
	used := make(map[int64]bool, len(clusters))
	for _, c := range clusters {
		used[int64(c)*benchCluster/mib] = true
	}
	var offs []int64
	for i := range 8 {
		offs = append(offs, int64(clusters[i*97])*benchCluster&^(mib-1))
	}
	for m := int64(0); m < benchVirtualSize/mib && len(offs) < 10; m++ {
		if !used[m] {
			offs = append(offs, m*mib)
		}
	}
	chunk := make([]byte, mib)
	for i, off := range offs {
		if i >= 5 && i < 8 {
			clear(chunk)
		} else {
			fill(chunk)
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			return err
		}
	}
	if err := convert("-f", "raw", "-O", "qcow2", raw, benchNewBase); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Remove(raw); err != nil {
		return err
	}
	// The overlay: a quarter of the data clusters rewritten, each with the
	// same random chunk, in one qemu-io run.
	chunkFile := filepath.Join(dir, "chunk")
	cl := make([]byte, benchCluster)
	fill(cl)
	if err := os.WriteFile(chunkFile, cl, 0o644); err != nil {
		return err
	}
	create := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2", benchOverlay)
	create.Dir = dir
	if out, err := create.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create: %v\n%s", err, out)
	}
	qio := []string{"-f", "qcow2"}
	for _, c := range clusters[:len(clusters)/4] {
		qio = append(qio, "-c", fmt.Sprintf("write -q -s %s %d %d", chunkFile, int64(c)*benchCluster, benchCluster))
	}
	cmd := exec.Command("qemu-io", append(qio, benchOverlay)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-io: %v\n%.1000s", err, out)
	}
	return os.Remove(chunkFile)
}

func BenchmarkRebaseSafe(b *testing.B) {
	benchChanging(b, []string{benchOverlay}, "rebase", "-q", "-b", benchNewBase, "-F", "qcow2", benchOverlay)
}

func BenchmarkRebaseUnsafe(b *testing.B) {
	benchChanging(b, []string{benchOverlay}, "rebase", "-q", "-u", "-b", benchNewBase, "-F", "qcow2", benchOverlay)
}

func BenchmarkDetach(b *testing.B) {
	benchChanging(b, []string{benchOverlay}, "rebase", "-q", "-b", "", benchOverlay)
}

func BenchmarkCommit(b *testing.B) {
	benchChanging(b, []string{benchImage, benchOverlay}, "commit", "-q", benchOverlay)
}

// benchChanging times a command that changes images: each run, instarfs's
// and then qemu-img's, gets fresh copies of the files in change (synced, so
// that neither pays for writing back the copy) and hard links to the other
// files of the set. Only instarfs's runs are inside the timer.
func benchChanging(b *testing.B, change []string, args ...string) {
	dir := benchChainSetup(b)
	work := filepath.Join(dir, "run")
	prepare := func() {
		if err := os.RemoveAll(work); err != nil {
			b.Fatal(err)
		}
		if err := os.Mkdir(work, 0o755); err != nil {
			b.Fatal(err)
		}
		for _, name := range []string{benchImage, benchOverlay, benchNewBase} {
			src, dst := filepath.Join(dir, name), filepath.Join(work, name)
			if slices.Contains(change, name) {
				if err := copyFileSynced(src, dst); err != nil {
					b.Fatal(err)
				}
			} else if err := os.Link(src, dst); err != nil {
				b.Fatal(err)
			}
		}
	}
	run := func(name string, args ...string) (wall, cpu time.Duration) {
		cmd := exec.Command(name, args...)
		cmd.Dir = work
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s %v: %v\n%.1000s", name, args, err, out)
		}
		wall = time.Since(start)
		return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	ours := append([]string{"--allow-dir", work}, args...)
	prepare()
	run("qemu-img", args...) // warm the page cache
	var m benchMeasure
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		prepare()
		b.StartTimer()
		m.ours(b, work, ours...)
		b.StopTimer()
		prepare()
		wall, cpu := run("qemu-img", args...)
		m.qemu = append(m.qemu, wall)
		m.qemuCPU += cpu
		b.StartTimer()
	}
	b.StopTimer()
	m.report(b)
}

// copyFileSynced copies src to dst and makes the copy durable.
func copyFileSynced(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
