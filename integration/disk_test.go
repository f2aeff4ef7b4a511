package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// convertRaw writes the guest content of img (in dir) with qemu-img convert
// and returns the raw file's path.
func convertRaw(t *testing.T, dir, img string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "flat.raw")
	if r := qemuImg(t, dir, "convert", "-U", "-O", "raw", img, out); r.code != 0 {
		t.Fatalf("qemu-img convert %s: %s", img, r.stderr)
	}
	return out
}

// sameContent compares two files in chunks, and says where they differ.
func sameContent(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; {
		na, errA := io.ReadFull(fa, ba)
		nb, errB := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			for i := 0; i < min(na, nb); i++ {
				if ba[i] != bb[i] {
					return fmt.Errorf("differ at byte %d", off+int64(i))
				}
			}
			return fmt.Errorf("lengths differ: %d bytes, then %d and %d", off, na, nb)
		}
		off += int64(na)
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			if errB != errA {
				return fmt.Errorf("one file ends at %d (%v, %v)", off, errA, errB)
			}
			return nil
		}
		if errA != nil {
			return errA
		}
		if errB != nil {
			return errB
		}
	}
}

// deepChain builds a qcow2 chain of n images in dir, each writing its own
// pattern (some with zero writes over the data below), and returns the top.
func deepChain(t *testing.T, dir string, n int) string {
	t.Helper()
	script := "set -e\nqemu-img create -q -f qcow2 -o cluster_size=4k d0.qcow2 8M\n"
	for i := 1; i < n; i++ {
		script += fmt.Sprintf("qemu-img create -q -f qcow2 -o cluster_size=%dk -b d%d.qcow2 -F qcow2 d%d.qcow2 8M\n", 4<<(i%3), i-1, i)
	}
	for i := 0; i < n; i++ {
		script += fmt.Sprintf("qemu-io -c 'write -P %d %d 12k' -c 'write -z %d 4k' d%d.qcow2 >/dev/null\n", 0x10+i, i*300<<10, (n-i)*256<<10, i)
	}
	shellIn(t, dir, script)
	return fmt.Sprintf("d%d.qcow2", n-1)
}

// TestDiskMatchesConvert checks that every image's disk file holds what
// `qemu-img convert -O raw` writes: every good image of the corpus (qcow2
// versions and cluster sizes, compressed clusters, extended L2, zero
// clusters, internal snapshots, vmdk monolithicSparse and streamOptimized,
// vmdk and raw backings, chains), and a chain 16 images deep.
func TestDiskMatchesConvert(t *testing.T) {
	good := filepath.Join(imagesDir, "good")
	deep := t.TempDir()
	top := deepChain(t, deep, 16)

	for _, tc := range []struct {
		dir    string
		images []string
	}{
		{good, nil},
		{deep, []string{top}},
	} {
		images := tc.images
		if images == nil {
			for _, e := range entries("good") {
				images = append(images, strings.TrimPrefix(e.Name, "good/"))
			}
		}
		m := mount(t, tc.dir, nil, "--read-only")
		for _, img := range images {
			t.Run(img, func(t *testing.T) {
				want := convertRaw(t, tc.dir, img)
				disk := m.path(img, "disk")
				st, err := os.Stat(disk)
				if err != nil {
					t.Fatal(err)
				}
				wst, _ := os.Stat(want)
				if st.Size() != wst.Size() || st.Mode().Perm() != 0o444 {
					t.Errorf("disk: size %d mode %v, want size %d mode 0444", st.Size(), st.Mode(), wst.Size())
				}
				if err := sameContent(disk, want); err != nil {
					t.Errorf("disk and qemu-img convert: %v", err)
				}
			})
		}
	}
}

// mapDataRanges is where `qemu-img map` says img (in dir) has data.
func mapDataRanges(t *testing.T, dir, img string) [][2]int64 {
	t.Helper()
	r := qemuImg(t, dir, "map", "-U", "--output=json", img)
	if r.code != 0 {
		t.Fatalf("qemu-img map: %s", r.stderr)
	}
	var rows []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal(r.stdout, &rows); err != nil {
		t.Fatal(err)
	}
	var out [][2]int64
	for _, row := range rows {
		if !row.Data {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k][1] == row.Start {
			out[k][1] += row.Length
		} else {
			out = append(out, [2]int64{row.Start, row.Start + row.Length})
		}
	}
	return out
}

// seekDataRanges walks a file with SEEK_DATA and SEEK_HOLE.
func seekDataRanges(t *testing.T, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var out [][2]int64
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA %d: %v", off, err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil || hole <= data {
			t.Fatalf("SEEK_HOLE %d: %d, %v", data, hole, err)
		}
		out = append(out, [2]int64{data, hole})
		off = hole
	}
	if _, err := unix.Seek(int(f.Fd()), st.Size(), unix.SEEK_DATA); !errors.Is(err, unix.ENXIO) {
		t.Errorf("SEEK_DATA at the end: %v, want ENXIO", err)
	}
	return out
}

// TestDiskHoles checks that SEEK_DATA/SEEK_HOLE on disk show the chain's
// data where qemu-img map shows it, and that copies of disk stay sparse.
func TestDiskHoles(t *testing.T) {
	good := filepath.Join(imagesDir, "good")
	m := mount(t, good, nil, "--read-only")
	for _, img := range []string{"v3-c64k.qcow2", "chain-top.qcow2", "xl2-c64k.qcow2", "vmdk-sparse.vmdk", "compressed-zlib.qcow2"} {
		t.Run(img, func(t *testing.T) {
			want := mapDataRanges(t, good, img)
			got := seekDataRanges(t, m.path(img, "disk"))
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("SEEK_DATA/SEEK_HOLE data ranges\n%v\nqemu-img map data ranges\n%v", got, want)
			}
			var data int64
			for _, r := range want {
				data += r[1] - r[0]
			}
			flat := convertRaw(t, good, img)
			for _, sparse := range []string{"always", "auto"} {
				cp := filepath.Join(t.TempDir(), "copy")
				if r := execIn(t, "/", "cp", "--sparse="+sparse, m.path(img, "disk"), cp); r.code != 0 {
					t.Fatalf("cp: %s", r.stderr)
				}
				var st syscall.Stat_t
				syscall.Stat(cp, &st)
				if st.Blocks*512 > data+1<<20 {
					t.Errorf("cp --sparse=%s: the copy takes %d bytes for %d bytes of data", sparse, st.Blocks*512, data)
				}
				if err := sameContent(cp, flat); err != nil {
					t.Errorf("cp --sparse=%s: %v", sparse, err)
				}
			}
		})
	}
}

// TestDiskJob checks what a job does to an open disk: the job runs, the open
// file's reads fail with EIO (its chain changed under it), and a new open
// sees the new content.
func TestDiskJob(t *testing.T) {
	dir := demoCopy(t)
	m := mount(t, dir, nil)
	before := convertRaw(t, dir, "overlay.qcow2")
	if err := sameContent(m.path("overlay.qcow2", "disk"), before); err != nil {
		t.Fatalf("before: %v", err)
	}
	f, err := os.Open(m.path("overlay.qcow2", "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	// An unsafe rebase changes what the overlay reads as.
	if r := m.shell(t, "echo -u -b new-base.qcow2 -F qcow2 > overlay.qcow2/rebase"); r.code != 0 {
		t.Fatalf("rebase while disk is open: exit %d, %s", r.code, r.stderr)
	}
	after := convertRaw(t, dir, "overlay.qcow2")
	if sameContent(before, after) == nil {
		t.Fatal("the unsafe rebase did not change the guest content; the test proves nothing")
	}
	if _, err := f.ReadAt(buf, 1<<20); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the disk opened before the rebase: %v, want EIO", err)
	}
	// The log line may reach the test's buffer a little after the errno.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(m.stderr.String(), "CHAIN_CHANGED"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("no logged reason for the EIO:\n%s", m.stderr)
			break
		}
	}
	if err := sameContent(m.path("overlay.qcow2", "disk"), after); err != nil {
		t.Errorf("a new open after the rebase: %v", err)
	}
}

// TestDiskConcurrentReaders reads two disks from several goroutines at
// random offsets and sizes, and checks every byte.
func TestDiskConcurrentReaders(t *testing.T) {
	good := filepath.Join(imagesDir, "good")
	m := mount(t, good, nil, "--read-only")
	imgs := []string{"chain-top.qcow2", "compressed-zstd.qcow2", "vmdk-stream.vmdk"}
	want := map[string][]byte{}
	for _, img := range imgs {
		b, err := os.ReadFile(convertRaw(t, good, img))
		if err != nil {
			t.Fatal(err)
		}
		want[img] = b
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			img := imgs[g%len(imgs)]
			f, err := os.Open(m.path(img, "disk"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewSource(int64(g)))
			w := want[img]
			for i := 0; i < 200; i++ {
				n := 1 + rng.Intn(256<<10)
				off := rng.Int63n(int64(len(w) - n))
				buf := make([]byte, n)
				if _, err := f.ReadAt(buf, off); err != nil {
					errs <- fmt.Errorf("%s: read %d at %d: %v", img, n, off, err)
					return
				}
				if !bytes.Equal(buf, w[off:off+int64(n)]) {
					errs <- fmt.Errorf("%s: wrong bytes read at %d", img, off)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("mount log:\n%s", m.stderr)
	}
}

// diskWorkers counts the running workers started by the mount process pid.
// Every worker of a read-only mount with nothing else going on is a disk
// worker.
func diskWorkers(t *testing.T, pid int) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		if bytes.Contains(status, []byte("\nPPid:\t"+strconv.Itoa(pid)+"\n")) && !bytes.Contains(status, []byte("State:\tZ")) {
			n++
		}
	}
	return n
}

// TestDiskWorkerLimit opens more disks than --disk-workers allows and checks
// that the reads are right, that no more workers than the limit ever run,
// and that idle workers end.
func TestDiskWorkerLimit(t *testing.T) {
	good := filepath.Join(imagesDir, "good")
	m := mount(t, good, nil, "--read-only", "--disk-workers=2")
	imgs := []string{"v3-c4k.qcow2", "v3-c64k.qcow2", "v2-c64k.qcow2", "vmdk-sparse.vmdk"}
	var files []*os.File
	for _, img := range imgs {
		f, err := os.Open(m.path(img, "disk"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	for round := 0; round < 3; round++ {
		for i, f := range files {
			flat := convertRaw(t, good, imgs[i])
			w, _ := os.ReadFile(flat)
			got := make([]byte, 256<<10)
			off := int64(round) * 1 << 20
			// Direct reads of disk bypass nothing: the page cache may
			// answer, so read a fresh range each round.
			if _, err := f.ReadAt(got, off); err != nil {
				t.Fatalf("%s: %v", imgs[i], err)
			}
			if !bytes.Equal(got, w[off:off+int64(len(got))]) {
				t.Errorf("%s: wrong bytes at %d", imgs[i], off)
			}
			if n := diskWorkers(t, m.cmd.Process.Pid); n > 2 {
				t.Fatalf("%d workers run with --disk-workers=2", n)
			}
		}
	}
	for _, f := range files {
		f.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for diskWorkers(t, m.cmd.Process.Pid) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still run 30 s after every disk was closed", diskWorkers(t, m.cmd.Process.Pid))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
