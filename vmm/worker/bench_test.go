package worker

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"testing"

	"instarfs/proto"
)

// The benchmarks run the worker's rebase and commit in this process, on the
// reference set the integration benchmarks build (ref.qcow2, ov.qcow2 on top
// of it, newbase.qcow2), found in the directory $INSTARFS_BENCH_SET; without
// it they are skipped. They are for profiling:
//
//	INSTARFS_BENCH_SET=DIR go test ./vmm/worker -run '^$' -bench . -cpuprofile cpu.out

// benchSet copies the named files of the reference set into a fresh
// directory, with the timer stopped, and opens them.
func benchSet(b *testing.B, copied, linked []string) []*os.File {
	b.Helper()
	set := os.Getenv("INSTARFS_BENCH_SET")
	if set == "" {
		b.Skip("INSTARFS_BENCH_SET is not set")
	}
	b.StopTimer()
	defer b.StartTimer()
	dir := b.TempDir()
	var fs []*os.File
	open := func(name string) {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		fs = append(fs, f)
	}
	for _, name := range copied {
		in, err := os.Open(filepath.Join(set, name))
		if err != nil {
			b.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dir, name))
		if err == nil {
			_, err = io.Copy(out, in)
		}
		if err == nil {
			err = out.Sync()
		}
		in.Close()
		out.Close()
		if err != nil {
			b.Fatal(err)
		}
		open(name)
	}
	for _, name := range linked {
		if err := os.Link(filepath.Join(set, name), filepath.Join(dir, name)); err != nil {
			b.Fatal(err)
		}
		open(name)
	}
	return fs
}

func benchSession(op string, files []*os.File, names []string, args string) *session {
	var refs []proto.ImageRef
	for i, n := range names {
		refs = append(refs, proto.ImageRef{Name: n, Format: "qcow2", Writable: i == 0 || op == proto.OpCommit})
	}
	return &session{
		req:   proto.Request{Op: op, Images: refs, Args: []byte(args)},
		files: files,
		out:   &output{w: bufio.NewWriter(io.Discard)},
	}
}

func BenchmarkWorkerRebaseSafe(b *testing.B) {
	for range b.N {
		fs := benchSet(b, []string{"ov.qcow2"}, []string{"ref.qcow2", "newbase.qcow2"})
		s := benchSession(proto.OpRebase, fs, []string{"ov.qcow2", "ref.qcow2", "newbase.qcow2"},
			`{"backing":"newbase.qcow2","backing_format":"qcow2","old_count":1,"new_in_old":-1}`)
		if _, err := opRebase(b.Context(), s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWorkerCommit(b *testing.B) {
	for range b.N {
		fs := benchSet(b, []string{"ov.qcow2", "ref.qcow2"}, nil)
		s := benchSession(proto.OpCommit, fs, []string{"ov.qcow2", "ref.qcow2"}, `{"base":1}`)
		if _, err := opCommit(b.Context(), s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWorkerDetach(b *testing.B) {
	for range b.N {
		fs := benchSet(b, []string{"ov.qcow2"}, []string{"ref.qcow2"})
		s := benchSession(proto.OpRebase, fs, []string{"ov.qcow2", "ref.qcow2"},
			`{"backing":"","old_count":1,"new_in_old":-1}`)
		if _, err := opRebase(b.Context(), s); err != nil {
			b.Fatal(err)
		}
	}
}
