package worker

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// The benchmarks run the worker's rebase and commit in this process, on the
// reference set the integration benchmarks build (ref.qcow2, ov.qcow2 on top
// of it, newbase.qcow2), found in the directory $INSTARFS_BENCH_SET; without
// it they are skipped. They are for profiling:
//
//	INSTARFS_BENCH_SET=DIR go test ./vmm/worker -run '^$' -bench . -cpuprofile cpu.out

// benchSet copies the copied files of the reference set into a fresh
// directory and hard-links the linked ones there, with the timer stopped,
// and opens the copied ones read-write.
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
		s := benchSession(proto.OpRebase, fs, []string{"ov.qcow2"},
			`{"backing":"newbase.qcow2","backing_format":"qcow2"}`)
		s.req.Broker, s.broker = true, dirBroker(b, filepath.Dir(fs[0].Name()), "newbase.qcow2")
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
		s := benchSession(proto.OpRebase, fs, []string{"ov.qcow2"}, `{"backing":""}`)
		s.req.Broker, s.broker = true, dirBroker(b, filepath.Dir(fs[0].Name()), "")
		if _, err := opRebase(b.Context(), s); err != nil {
			b.Fatal(err)
		}
	}
}

// dirBroker answers a worker's broker questions the way the host does for a
// rebase, from the files of dir: a backing file is the name a member
// records, the new backing file is newBacking, each opened read-only (a
// member already open is answered Same). It returns the worker's end of the
// socket.
func dirBroker(tb testing.TB, dir, newBacking string) int {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fds[1]) })
	go func() {
		defer unix.Close(fds[0])
		names := []string{""} // the members' names; the top's is never asked for
		infos := map[int]*proto.Info{}
		buf := make([]byte, proto.MaxBrokerBytes)
		for {
			n, _, _, _, err := unix.Recvmsg(fds[0], buf, nil, 0)
			if err != nil || n == 0 {
				return
			}
			var q proto.BrokerRequest
			if err := json.Unmarshal(buf[:n], &q); err != nil {
				return
			}
			if q.Info != nil {
				infos[q.Image] = q.Info
			}
			var reply proto.BrokerReply
			var rights []byte
			name, format := newBacking, ""
			if q.Open == proto.OpenBacking && infos[q.Image] != nil {
				name, format = infos[q.Image].BackingFilename, infos[q.Image].BackingFilenameFormat
			}
			if i := slices.Index(names, name); q.Open != "" && i > 0 {
				reply = proto.BrokerReply{Image: i, Same: true}
			} else if q.Open != "" {
				fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					reply.Error = errcode.New(errcode.BackingNotFound, "opening '%s': %v", name, err)
				} else {
					defer unix.Close(fd)
					reply = proto.BrokerReply{Image: len(names), Name: name, Format: format}
					rights = unix.UnixRights(fd)
					names = append(names, name)
				}
			}
			out, err := json.Marshal(reply)
			if err == nil {
				err = unix.Sendmsg(fds[0], out, rights, nil, 0)
			}
			if err != nil {
				return
			}
		}
	}()
	return fds[1]
}
