package integration

import (
	"bufio"
	"bytes"
	bin "encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"instarfs/internal/qemutest"
	"instarfs/vmm"
)

// The benchmarks run instarfs and qemu-img on the same images in the same
// run, one after the other, the order alternating from run to run, the page
// cache warm. Each benchmark reports the medians:
//
//	ns/op       instarfs's wall-clock time per command
//	qemu-ns/op  qemu-img's
//	x-qemu      the ratio of the two (below 1: instarfs is faster)
//	starts/op   sandbox workers one command started
//	worker-MiB  the largest peak resident set of those workers
//	cpu-ns/op, qemu-cpu-ns/op  CPU times (user and system, the worker included)
//	io-ns/op    commit and detach: their I/O replayed alone (ioPlan), the
//	            floor of their time
//
// and `make bench` prints them as a table at the end.
//
// The sets (see benchSets): "ref" is the reference set of the design's
// performance targets — a 2 GiB qcow2 base with 384 MiB of data in scattered
// 64 KiB clusters, an overlay rewriting a quarter of them, a new base
// differing in a few MiB; "alt" has the same shape from another seed, its
// data in runs of 4 clusters; "1t" is a 1 TiB-virtual image with 64 MiB of
// scattered data, for the worker's memory bound. The operations that change
// images (rebase, detach, commit) run on fresh copies of the files they
// change, made outside the timings.
//
//	go test ./integration -run '^$' -bench 'Ops/ref' -benchtime 10x
//	go test ./integration -run '^$' -bench 'Ops/.*/(rebase|commit)' -benchtime 5x

// benchSet is the shape of one set of benchmark images.
type benchSet struct {
	name    string
	virtual int64  // virtual size
	data    int64  // bytes of data in the base
	run     int64  // clusters per run of data
	seed    uint64 // where the data lies and what it is
	// instarfsOnly are the operations qemu-img is not run for: qemu-img 7.2's
	// safe rebase walks the whole virtual size 2 MiB at a time, reading and
	// comparing, which on 1 TiB takes minutes.
	instarfsOnly []string
}

const benchCluster = 64 << 10

var benchSets = []benchSet{
	{name: "ref", virtual: 2 << 30, data: 384 << 20, run: 1, seed: 1},
	{name: "alt", virtual: 2 << 30, data: 384 << 20, run: 4, seed: 7},
	{name: "1t", virtual: 1 << 40, data: 64 << 20, run: 1, seed: 5,
		instarfsOnly: []string{"rebase-safe", "detach"}},
}

// The files of every set: the base, an overlay of it and a new base.
const (
	benchImage   = "ref.qcow2"
	benchOverlay = "ov.qcow2"
	benchNewBase = "newbase.qcow2"
)

// benchVirtualSize is the reference image's virtual size.
const benchVirtualSize = 2 << 30

var (
	benchMu   sync.Mutex
	benchDirs = map[string]string{} // set name → its built directory
	benchRoot string
)

// benchSetup builds the reference set once per run and returns its directory
// and its base image.
func benchSetup(b *testing.B) (dir, image string) {
	return benchBuild(b, benchSets[0]), benchImage
}

// benchBuild builds set once per run and returns its directory.
func benchBuild(b *testing.B, set benchSet) string {
	b.Helper()
	benchMu.Lock()
	defer benchMu.Unlock()
	if dir, ok := benchDirs[set.name]; ok {
		return dir
	}
	if benchRoot == "" {
		root, err := os.MkdirTemp(filepath.Dir(binary), "bench-") // removed with the harness's directory
		if err != nil {
			b.Fatal(err)
		}
		benchRoot = root
	}
	dir := filepath.Join(benchRoot, set.name)
	start := time.Now()
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := set.build(dir); err != nil {
		b.Fatalf("building the %s set: %v", set.name, err)
	}
	// Written back now, the set's hundreds of MiB do not keep the disk
	// busy during the first timings.
	syscall.Sync()
	b.Logf("built the %s set in %v", set.name, time.Since(start).Round(time.Millisecond))
	benchDirs[set.name] = dir
	return dir
}

// runs returns the first cluster of every run of data, in a random order.
func (s benchSet) runs() []int64 {
	rng := rand.New(rand.NewPCG(s.seed, 2))
	slots := s.virtual / (s.run * benchCluster)
	n := int(s.data / (s.run * benchCluster))
	seen := make(map[int64]bool, n)
	var out []int64
	for len(out) < n {
		r := rng.Int64N(slots)
		if !seen[r] {
			seen[r] = true
			out = append(out, r*s.run)
		}
	}
	return out
}

// build writes the set into dir: the base from a sparse raw file written by
// Go, the new base from the same file changed in a few MiB (5 MiB of data
// overwritten, 3 MiB zeroed, 2 MiB written into holes), both converted by
// qemu-img; the overlay by qemu-io, a quarter of the runs rewritten.
func (s benchSet) build(dir string) error {
	qemu := func(name string, args ...string) error {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %.200v: %v\n%.1000s", name, args, err, out)
		}
		return nil
	}
	raw := filepath.Join(dir, "src.raw")
	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(s.virtual); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(s.seed, 3))
	fill := func(p []byte) {
		for i := 0; i+8 <= len(p); i += 8 {
			bin.LittleEndian.PutUint64(p[i:], rng.Uint64())
		}
	}
	runs := s.runs()
	buf := make([]byte, s.run*benchCluster)
	for _, c := range runs {
		fill(buf)
		if _, err := f.WriteAt(buf, c*benchCluster); err != nil {
			return err
		}
	}
	if err := qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, benchImage); err != nil {
		return err
	}

	const mib = 1 << 20
	used := make(map[int64]bool, len(runs))
	for _, c := range runs {
		for i := range s.run {
			used[(c+i)*benchCluster/mib] = true
		}
	}
	var offs []int64
	for i := range 8 {
		offs = append(offs, runs[i*len(runs)/8]*benchCluster&^(mib-1))
	}
	for m := s.virtual/mib/3 + 1; m < s.virtual/mib && len(offs) < 10; m++ {
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
	if err := qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, benchNewBase); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Remove(raw); err != nil {
		return err
	}

	// The overlay: each rewritten run gets the same random chunk, in one
	// qemu-io run.
	chunkFile := filepath.Join(dir, "chunk")
	fill(buf)
	if err := os.WriteFile(chunkFile, buf, 0o644); err != nil {
		return err
	}
	if err := qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", benchImage, "-F", "qcow2", benchOverlay); err != nil {
		return err
	}
	qio := []string{"-f", "qcow2"}
	for _, c := range runs[:len(runs)/4] {
		qio = append(qio, "-c", fmt.Sprintf("write -q -s %s %d %d", chunkFile, c*benchCluster, len(buf)))
	}
	if err := qemu("qemu-io", append(qio, benchOverlay)...); err != nil {
		return err
	}
	return os.Remove(chunkFile)
}

// benchOp is one operation: its arguments (the same for instarfs and
// qemu-img) and the files it changes.
type benchOp struct {
	name   string
	args   []string
	change []string
}

var benchOps = []benchOp{
	{name: "info", args: []string{"info", "--output=json", benchOverlay}},
	{name: "info-chain", args: []string{"info", "--backing-chain", "--output=json", benchOverlay}},
	{name: "map", args: []string{"map", "--output=json", benchOverlay}},
	{name: "check", args: []string{"check", "--output=json", benchOverlay}},
	{name: "rebase-safe", args: []string{"rebase", "-q", "-b", benchNewBase, "-F", "qcow2", benchOverlay}, change: []string{benchOverlay}},
	{name: "rebase-unsafe", args: []string{"rebase", "-q", "-u", "-b", benchNewBase, "-F", "qcow2", benchOverlay}, change: []string{benchOverlay}},
	{name: "detach", args: []string{"rebase", "-q", "-b", "", benchOverlay}, change: []string{benchOverlay}},
	{name: "commit", args: []string{"commit", "-q", benchOverlay}, change: []string{benchImage, benchOverlay}},
}

// benchRow is one line of the report `make bench` prints.
type benchRow struct {
	set, op          string
	ours, qemu       time.Duration // medians of the wall-clock times
	oursCPU, qemuCPU time.Duration // medians of the CPU times (user and system, the worker included)
	starts, rssKiB   int64         // the most any run showed
	io               time.Duration // commit, detach: the median of its I/O replayed alone (ioPlan)
	runs             int
	// maxStarts is the most worker starts the row may show: 1 for a
	// command; for the mount's rows, what the phase may start.
	maxStarts int64
}

var benchRows []benchRow // guarded by benchMu

// BenchmarkOps runs every operation on every set, Ops/<set>/<operation>,
// then the mount's case, Ops/mount (benchMount).
func BenchmarkOps(b *testing.B) {
	for _, set := range benchSets {
		b.Run(set.name, func(b *testing.B) {
			for _, op := range benchOps {
				b.Run(op.name, func(b *testing.B) { benchOperation(b, set, op) })
			}
		})
	}
	b.Run("mount", benchMount)
}

// benchOperation times op on set b.N times for each program, alternating
// which goes first. Runs of an operation that changes images each get fresh
// copies of the files in change (synced, so that neither pays for writing
// back the copy) and hard links to the other files of the set.
func benchOperation(b *testing.B, set benchSet, op benchOp) {
	dir := benchBuild(b, set)
	work := dir
	if op.change != nil {
		work = filepath.Join(dir, "run")
	}
	prepare := func() {
		if op.change == nil {
			return
		}
		if err := os.RemoveAll(work); err != nil {
			b.Fatal(err)
		}
		if err := os.Mkdir(work, 0o755); err != nil {
			b.Fatal(err)
		}
		for _, name := range []string{benchImage, benchOverlay, benchNewBase} {
			src, dst := filepath.Join(dir, name), filepath.Join(work, name)
			if slices.Contains(op.change, name) {
				if err := copyFileSynced(src, dst); err != nil {
					b.Fatal(err)
				}
			} else if err := os.Link(src, dst); err != nil {
				b.Fatal(err)
			}
		}
	}
	ours := append([]string{"--log-level=debug", "--log-format=json", "--allow-dir", work}, op.args...)
	var row benchRow
	run := func(name string, args ...string) (wall, cpu time.Duration) {
		prepare()
		var stderr bytes.Buffer
		cmd := exec.Command(name, args...)
		cmd.Dir = work
		cmd.Stdout = io.Discard
		cmd.Stderr = &stderr
		start := time.Now()
		err := cmd.Run()
		wall = time.Since(start)
		if err != nil {
			b.Fatalf("%s %q: %v\n%.2000s", name, args, err, stderr.Bytes())
		}
		if name == binary {
			starts, rss := workerStats(b, stderr.Bytes())
			row.starts, row.rssKiB = max(row.starts, starts), max(row.rssKiB, rss)
		}
		return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	withQemu := !slices.Contains(set.instarfsOnly, op.name)
	if withQemu {
		run("qemu-img", op.args...) // warm the page cache
	}
	run(binary, ours...)
	// After a commit, the overlay in work has its emptied length; after a
	// detach, the layout the copies go to.
	var plan *ioPlan
	switch op.name {
	case "commit":
		fi, err := os.Stat(filepath.Join(work, benchOverlay))
		if err != nil {
			b.Fatal(err)
		}
		p := planCommitIO(b, dir, fi.Size())
		plan = &p
	case "detach":
		p := planDetachIO(b, dir, work)
		plan = &p
	}
	var replay func()
	var ioT []time.Duration
	if plan != nil {
		b.Logf("%s's I/O: %d copies, %d bytes", op.name, len(plan.copies), plan.bytes())
		replay = func() {
			prepare()
			start := time.Now()
			if err := plan.replay(work); err != nil {
				b.Fatalf("replaying %s's I/O: %v", op.name, err)
			}
			ioT = append(ioT, time.Since(start))
		}
	}
	b.ResetTimer()
	b.StopTimer()
	var oursT, qemuT, oursCPU, qemuCPU []time.Duration
	runOurs := func() {
		wall, cpu := run(binary, ours...)
		oursT, oursCPU = append(oursT, wall), append(oursCPU, cpu)
	}
	runQemu := func() {
		if !withQemu {
			return
		}
		wall, cpu := run("qemu-img", op.args...)
		qemuT, qemuCPU = append(qemuT, wall), append(qemuCPU, cpu)
	}
	for i := range b.N {
		if replay != nil && i%2 == 0 {
			replay()
		}
		if i%2 == 0 {
			runOurs()
			runQemu()
		} else {
			runQemu()
			runOurs()
		}
		if replay != nil && i%2 == 1 {
			replay()
		}
	}
	row.set, row.op, row.runs, row.maxStarts = set.name, op.name, b.N, 1
	row.ours, row.oursCPU = median(oursT), median(oursCPU)
	if ioT != nil {
		row.io = median(ioT)
	}
	if withQemu {
		row.qemu, row.qemuCPU = median(qemuT), median(qemuCPU)
	}
	reportRow(b, row)
}

// reportRow reports row's metrics and keeps it for the table.
func reportRow(b *testing.B, row benchRow) {
	b.ReportMetric(float64(row.ours.Nanoseconds()), "ns/op")
	b.ReportMetric(float64(row.oursCPU.Nanoseconds()), "cpu-ns/op")
	if row.qemu > 0 {
		b.ReportMetric(float64(row.qemu.Nanoseconds()), "qemu-ns/op")
		b.ReportMetric(float64(row.ours)/float64(row.qemu), "x-qemu")
		b.ReportMetric(float64(row.qemuCPU.Nanoseconds()), "qemu-cpu-ns/op")
	}
	if row.io > 0 {
		b.ReportMetric(float64(row.io.Nanoseconds()), "io-ns/op")
	}
	b.ReportMetric(float64(row.starts), "starts/op")
	b.ReportMetric(float64(row.rssKiB)/1024, "worker-MiB")
	benchMu.Lock()
	benchRows = slices.DeleteFunc(benchRows, func(r benchRow) bool { return r.set == row.set && r.op == row.op })
	benchRows = append(benchRows, row)
	benchMu.Unlock()
}

// workerStats counts the workers a command started and returns the largest
// peak RSS among them, from its debug log (the line vmm logs for every
// worker it waited for).
func workerStats(b *testing.B, log []byte) (starts, maxRSSKiB int64) {
	starts, maxRSSKiB = workerLines(log)
	if starts == 0 {
		b.Fatalf("no %q line in the debug log:\n%.2000s", vmm.ExitedMessage, log)
	}
	return starts, maxRSSKiB
}

// workerLines counts the workers a debug log says exited and returns the
// largest peak RSS among them.
func workerLines(log []byte) (starts, maxRSSKiB int64) {
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e struct {
			Msg    string `json:"msg"`
			MaxRSS int64  `json:"maxrss_kib"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Msg != vmm.ExitedMessage {
			continue
		}
		starts++
		maxRSSKiB = max(maxRSSKiB, e.MaxRSS)
	}
	return starts, maxRSSKiB
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// printBenchReport prints the rows the benchmarks of this run recorded as one
// table, when there are any.
func printBenchReport() {
	if len(benchRows) == 0 {
		return
	}
	qv, _ := exec.Command("qemu-img", "--version").Output()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\ninstarfs vs %s (medians of alternating runs, page cache warm, the sandbox on)\n",
		strings.SplitN(string(qv), "\n", 2)[0])
	fmt.Printf("load average at the end: %s\n", strings.Join(strings.Fields(string(load))[:3], " "))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "set\toperation\truns\tinstarfs\tqemu-img\tratio\ttarget\tworker starts\tworker peak RSS\tinstarfs CPU\tqemu-img CPU\tI/O alone\t")
	for _, r := range benchRows {
		qemu, ratio, verdict, qemuCPU := "not run", "-", "", "-"
		if r.qemu > 0 {
			x := float64(r.ours) / float64(r.qemu)
			qemu, ratio, qemuCPU = ms(r.qemu), fmt.Sprintf("%.2f×", x), ms(r.qemuCPU)
			if target := benchTargets[r.op]; target > 0 {
				verdict = fmt.Sprintf("≤ %.1f", target)
				if x > target {
					verdict += " MISSED"
				}
			}
		}
		starts := fmt.Sprint(r.starts)
		if r.starts > r.maxStarts {
			starts += " MISSED"
		}
		rss := fmt.Sprintf("%.1f MiB", float64(r.rssKiB)/1024)
		if r.rssKiB > benchMaxRSSKiB {
			rss += " MISSED"
		}
		io := ""
		if r.io > 0 {
			io = ms(r.io)
			if r.qemu > 0 {
				io += fmt.Sprintf(" (%.2f×)", float64(r.io)/float64(r.qemu))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.set, r.op, r.runs,
			ms(r.ours), qemu, ratio, verdict, starts, rss, ms(r.oursCPU), qemuCPU, io)
	}
	tw.Flush()
	fmt.Printf("targets: ratio of the wall-clock medians (below 1: instarfs is faster); one worker start per command; worker peak RSS ≤ %d MiB\n", benchMaxRSSKiB/1024)
	fmt.Printf("mount: %d images; instarfs = ls -la of the mount or cat of every info.json (its CPU: the mount's, its workers included), qemu-img = a qemu-img info loop;\n", benchMountImages)
	fmt.Printf("       info-cold: cat of every info.json, nothing listed before; info-first: the same after a listing; starts: workers of the whole phase\n")
	fmt.Printf("I/O alone: commit's and detach's copies, syncs (and commit's cut) replayed by the benchmark itself, with no process, parsing or checks: the floor of their time\n")
	fmt.Printf("CPU: medians of user and system time, the worker included; less sensitive to a busy machine than wall-clock time\n")
	fmt.Printf("sets: ref = the reference set (2 GiB, 384 MiB of data in scattered 64 KiB clusters); alt = the same shape, other seed, data in runs of 4 clusters;\n")
	fmt.Printf("      1t = 1 TiB virtual, 64 MiB of data, for the memory bound (qemu-img not run where it needs minutes)\n\n")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// benchTargets are the design's targets: instarfs's time as a ratio to
// qemu-img's.
var benchTargets = map[string]float64{
	"info": 1.5, "info-chain": 1.5, "map": 1.5, "check": 1.5,
	"rebase-safe": 0.4, "commit": 0.6, "rebase-unsafe": 1.5, "detach": 0.6,
	"info-first": 1.0,
}

const benchMaxRSSKiB = 128 << 10

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

// The mount's case (issue: a listing of N images costs at most one worker per
// image not yet cached): benchMountImages small qcow2 images in one
// directory, overlays over benchMountBases bases.
const (
	benchMountImages = 200
	benchMountBases  = 4
	// benchMountRuns bounds the runs: every run lists the images cold.
	benchMountRuns = 3
)

// benchMountBuild builds the mount's images once per run and returns their
// directory: the bases 64 MiB virtual with 4 MiB of data, each overlay with
// 256 KiB of its own.
func benchMountBuild(b *testing.B) string {
	b.Helper()
	benchMu.Lock()
	defer benchMu.Unlock()
	if dir, ok := benchDirs["mount"]; ok {
		return dir
	}
	if benchRoot == "" {
		root, err := os.MkdirTemp(filepath.Dir(binary), "bench-")
		if err != nil {
			b.Fatal(err)
		}
		benchRoot = root
	}
	dir := filepath.Join(benchRoot, "mount")
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range benchMountImages {
		name := fmt.Sprintf("img%03d.qcow2", i)
		if i < benchMountBases {
			qemutest.Img(b, dir, "create", "-q", "-f", "qcow2", name, "64M")
			qemutest.IO(b, filepath.Join(dir, name), "qcow2", fmt.Sprintf("write -q -P %d 0 4M", i+1))
			continue
		}
		base := fmt.Sprintf("img%03d.qcow2", i%benchMountBases)
		qemutest.Img(b, dir, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", name)
		qemutest.IO(b, filepath.Join(dir, name), "qcow2", fmt.Sprintf("write -q -P %d %d 256k", i%250+1, int64(i)<<20%(60<<20)))
	}
	benchDirs["mount"] = dir
	return dir
}

// benchMount mounts the directory of benchMountImages images and times, in
// each run, after touching every image so that nothing the mount cached of
// them holds:
//
//	info-cold   one `cat` of every image's info.json, nothing listed before
//	            (each image's lookup probes it), against the qemu-img loop
//	ls-cold     the first `ls -la` of the mount (a probe per image), after
//	            touching the images again
//	ls-warm     `ls -la` again: it may start no worker
//	info-first  one `cat` of every image's info.json, the first reads, against
//	            a loop of `qemu-img info --output=json` over the same files
//
// instarfs's CPU time is the mount process's, its workers included; the
// workers are counted from its debug log.
func benchMount(b *testing.B) {
	dir := benchMountBuild(b)
	var images, infos []string
	for i := range benchMountImages {
		images = append(images, fmt.Sprintf("img%03d.qcow2", i))
	}
	m := mount(b, dir, []string{"--log-level=debug", "--log-format=json"})
	for _, name := range images {
		infos = append(infos, m.path(name, "info.json"))
	}
	pid := m.cmd.Process.Pid
	// phase runs name with args and returns its wall time, the mount's CPU
	// time meanwhile, the workers the mount started and their largest peak
	// RSS.
	phase := func(name string, args ...string) (wall, cpu time.Duration, starts, rss int64) {
		logAt, cpuAt := len(m.stderr.String()), processCPU(b, pid)
		var stderr bytes.Buffer
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = io.Discard, &stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("%s: %v\n%.2000s", name, err, stderr.Bytes())
		}
		wall = time.Since(start)
		cpu = processCPU(b, pid) - cpuAt
		starts, rss = workerLines([]byte(m.stderr.String()[logAt:]))
		return wall, cpu, starts, rss
	}
	qemuLoop := func() (wall, cpu time.Duration) {
		for _, name := range images {
			cmd := exec.Command("qemu-img", "info", "--output=json", name)
			cmd.Dir = dir
			cmd.Stdout = io.Discard
			start := time.Now()
			if err := cmd.Run(); err != nil {
				b.Fatalf("qemu-img info %s: %v", name, err)
			}
			wall += time.Since(start)
			cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		return wall, cpu
	}
	qemuLoop() // warm the page cache
	rows := map[string]*benchRow{
		"info-cold":  {maxStarts: benchMountImages},
		"ls-cold":    {maxStarts: benchMountImages},
		"ls-warm":    {maxStarts: 0},
		"info-first": {maxStarts: benchMountImages},
	}
	times := map[string][]time.Duration{}
	record := func(op, name string, args ...string) {
		wall, cpu, starts, rss := phase(name, args...)
		times[op] = append(times[op], wall)
		times[op+" cpu"] = append(times[op+" cpu"], cpu)
		rows[op].starts, rows[op].rssKiB = max(rows[op].starts, starts), max(rows[op].rssKiB, rss)
	}
	n := min(b.N, benchMountRuns)
	b.ResetTimer()
	b.StopTimer()
	touch := func() {
		t := time.Now()
		for _, name := range images {
			if err := os.Chtimes(filepath.Join(dir, name), t, t); err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := range n {
		touch()
		record("info-cold", "cat", infos...)
		touch()
		record("ls-cold", "ls", "-la", m.mnt)
		record("ls-warm", "ls", "-la", m.mnt)
		runInfo := func() { record("info-first", "cat", infos...) }
		runQemu := func() {
			wall, cpu := qemuLoop()
			times["qemu"], times["qemu cpu"] = append(times["qemu"], wall), append(times["qemu cpu"], cpu)
		}
		if i%2 == 0 {
			runInfo()
			runQemu()
		} else {
			runQemu()
			runInfo()
		}
	}
	for _, op := range []string{"info-cold", "ls-cold", "ls-warm", "info-first"} {
		r := rows[op]
		r.set, r.op, r.runs = "mount", op, n
		r.ours, r.oursCPU = median(times[op]), median(times[op+" cpu"])
		if strings.HasPrefix(op, "info") {
			r.qemu, r.qemuCPU = median(times["qemu"]), median(times["qemu cpu"])
		}
		benchMu.Lock()
		benchRows = slices.DeleteFunc(benchRows, func(x benchRow) bool { return x.set == r.set && x.op == r.op })
		benchRows = append(benchRows, *r)
		benchMu.Unlock()
	}
	info := rows["info-first"]
	b.ReportMetric(float64(info.ours.Nanoseconds()), "ns/op")
	b.ReportMetric(float64(info.qemu.Nanoseconds()), "qemu-ns/op")
	b.ReportMetric(float64(info.ours)/float64(info.qemu), "x-qemu")
	b.ReportMetric(float64(info.starts), "starts/op")
	b.ReportMetric(float64(rows["ls-warm"].starts), "ls-warm-starts")
}

// processCPU is the CPU time (user and system) of the process pid and of
// the children it has waited for.
func processCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command's name, which ends with the last ')':
	// utime, stime, cutime and cstime are the 12th to the 15th, in clock
	// ticks of 1/100 s.
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	var ticks int64
	for _, f := range fields[11:15] {
		var v int64
		fmt.Sscan(f, &v)
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
