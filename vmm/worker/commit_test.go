package worker

import (
	"bufio"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
	"instarfs/proto"
)

// runCommit runs opCommit on the files of dir (top first) in this process,
// turning a panic into a test failure.
func runCommit(t *testing.T, dir string, names, formats []string, args string) (res any, err error) {
	t.Helper()
	var fs []*os.File
	var refs []proto.ImageRef
	for i, n := range names {
		f, e := os.OpenFile(filepath.Join(dir, n), os.O_RDWR, 0)
		if e != nil {
			t.Fatal(e)
		}
		defer f.Close()
		fs = append(fs, f)
		refs = append(refs, proto.ImageRef{Name: n, Format: formats[i], Writable: true})
	}
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("commit panicked: %v", r)
		}
	}()
	s := &session{
		req:   proto.Request{Op: proto.OpCommit, Images: refs, Args: []byte(args)},
		files: fs,
		out:   &output{w: bufio.NewWriter(io.Discard)},
	}
	return opCommit(nil, s)
}

// TestCommitHostile commits chains whose metadata was damaged at random: the
// worker must fail with a named error or succeed, never panic.
func TestCommitHostile(t *testing.T) {
	qemutest.NeedQemu(t)
	tmpl := t.TempDir()
	sh(t, tmpl, `
qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 1M
qemu-io -c 'write -P 0x11 0 256k' -c 'write -c -P 0x12 512k 64k' base.qcow2 >/dev/null
qemu-img snapshot -c s base.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x22 4k 8k' -c 'write -z 64k 64k' -c 'write -P 0x23 700k 4k' top.qcow2 >/dev/null
qemu-img create -q -f vmdk vbase.vmdk 1M
qemu-io -f vmdk -c 'write -P 0x11 0 256k' vbase.vmdk >/dev/null
qemu-img create -q -f vmdk -b vbase.vmdk -F vmdk vtop.vmdk
qemu-io -f vmdk -c 'write -P 0x22 64k 64k' vtop.vmdk >/dev/null
`)
	chains := []struct {
		names, formats []string
	}{
		{[]string{"top.qcow2", "base.qcow2"}, []string{"qcow2", "qcow2"}},
		{[]string{"vtop.vmdk", "vbase.vmdk"}, []string{"vmdk", "vmdk"}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	outcomes := map[errcode.Code]int{}
	defer func() { t.Logf("outcomes: %v", outcomes) }()
	for i := range 300 {
		c := chains[i%len(chains)]
		dir := t.TempDir()
		for _, n := range c.names {
			b, err := os.ReadFile(filepath.Join(tmpl, n))
			if err != nil {
				t.Fatal(err)
			}
			// Damage the metadata: a few bytes in the first 64 KiB.
			for range 1 + rng.IntN(4) {
				b[rng.IntN(min(len(b), 64<<10))] ^= byte(1 + rng.IntN(255))
			}
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		_, err := runCommit(t, dir, c.names, c.formats, `{"base":1}`)
		switch {
		case err == nil:
			outcomes["ok"]++
		default:
			outcomes[errcode.Of(err)]++
			if errcode.Of(err) == errcode.Internal {
				t.Logf("iteration %d: internal error: %v", i, err)
			}
		}
	}
}

// TestCommitInProcess commits a small chain in this process and checks the
// result with qemu-img.
func TestCommitInProcess(t *testing.T) {
	qemutest.NeedQemu(t)
	// A version 3 top is emptied completely (truncated); a version 2 one
	// has its clusters discarded in place. Both count what they cleared.
	for _, opts := range []string{"", "-o compat=0.10"} {
		t.Run("top "+opts, func(t *testing.T) {
			dir := t.TempDir()
			sh(t, dir, `
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c 'write -P 0x11 0 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 `+opts+` -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x22 512k 64k' -c 'write -z 0 64k' top.qcow2 >/dev/null
cp top.qcow2 pristine.qcow2
`)
			res, err := runCommit(t, dir, []string{"top.qcow2", "base.qcow2"}, []string{"qcow2", "qcow2"}, `{"base":1}`)
			if err != nil {
				t.Fatal(err)
			}
			r := res.(proto.CommitResult)
			if r.ClustersCommitted != 2 || r.BytesCommitted != 128<<10 || r.OverlayClustersCleared != 2 {
				t.Errorf("result %+v", r)
			}
			for _, img := range []string{"base.qcow2", "top.qcow2"} {
				if r := qemutest.Check(t, filepath.Join(dir, img), "qcow2"); r.Code != 0 {
					t.Errorf("qemu-img check %s: exit %d\n%s%s", img, r.Code, r.Stdout, r.Stderr)
				}
			}
			if r := qemutest.Compare(t, filepath.Join(dir, "pristine.qcow2"), filepath.Join(dir, "top.qcow2")); r.Code != 0 {
				t.Errorf("qemu-img compare: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
			}
		})
	}
}
