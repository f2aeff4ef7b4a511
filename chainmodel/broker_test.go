package chainmodel

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/errcode"
	"instarfs/proto"
)

// brokerFixture is a directory of plain files (the broker never reads their
// bytes: what each "contains" is what the test's worker says), a file and a
// symlink outside it, and a FIFO inside.
func brokerFixture(t *testing.T) (images string, p Policy) {
	t.Helper()
	root := t.TempDir()
	images = filepath.Join(root, "images")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{images, outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i <= MaxDepth+1; i++ {
		if err := os.WriteFile(filepath.Join(images, fmt.Sprintf("l%d.img", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"top.img", "base.img", "other.img"} {
		if err := os.WriteFile(filepath.Join(images, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "secret.img"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret.img"), filepath.Join(images, "escape.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("top.img", filepath.Join(images, "alias.img")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(images, "fifo.img"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(images)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return images, p
}

// newTestBroker opens dir/top.img as the top of a broker.
func newTestBroker(t *testing.T, p Policy, dir string, backing bool) *Broker {
	t.Helper()
	path := filepath.Join(dir, "top.img")
	loc, _ := p.Place(path)
	f, st, err := p.Open(loc, How{Access: Read})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBroker(p, &Image{Name: path, Loc: loc, File: f, Stat: st}, "qcow2", false)
	b.Backing = backing
	t.Cleanup(b.Close)
	return b
}

func qcow2Backed(name string) *proto.Info {
	return &proto.Info{Format: "qcow2", VirtualSize: 1 << 20, BackingFilename: name, BackingFilenameFormat: "qcow2"}
}

// TestBrokerRefusesNames plays a worker that asks for names it must not get:
// each is refused with the code the policy gives, and no descriptor comes
// with the refusal.
func TestBrokerRefusesNames(t *testing.T) {
	dir, p := brokerFixture(t)
	for _, tc := range []struct {
		name string
		code errcode.Code
	}{
		{"/etc/passwd", errcode.BackingPathOutsideRoot},
		{"../outside/secret.img", errcode.BackingPathOutsideRoot},
		{filepath.Join(filepath.Dir(dir), "outside", "secret.img"), errcode.BackingPathOutsideRoot},
		{"escape.img", errcode.BackingPathOutsideRoot},
		{"/proc/self/root/etc/passwd", errcode.BackingPathOutsideRoot},
		{"json:{\"file.filename\":\"/etc/passwd\"}", errcode.BackingProtocol},
		{"nbd://localhost:10809/x", errcode.BackingProtocol},
		{"file:base.img", errcode.BackingProtocol},
		{"missing.img", errcode.BackingNotFound},
		{"fifo.img", errcode.NotRegularFile},
		{".", errcode.NotRegularFile},
		{"top.img", errcode.BackingChainLoop},
		{"alias.img", errcode.BackingChainLoop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBroker(t, p, dir, true)
			reply, files := b.Answer(proto.BrokerRequest{Image: 0, Info: qcow2Backed(tc.name), Open: proto.OpenBacking})
			if reply.Error == nil || reply.Error.Code != tc.code {
				t.Fatalf("reply %+v, want refusal %s", reply, tc.code)
			}
			if len(files) != 0 {
				t.Fatalf("a refusal came with %d descriptors", len(files))
			}
		})
	}
}

// TestBrokerProtocol plays a worker that breaks the broker's rules.
func TestBrokerProtocol(t *testing.T) {
	dir, p := brokerFixture(t)
	raw := &proto.Info{Format: "raw", VirtualSize: 1}
	for _, tc := range []struct {
		name    string
		backing bool
		reqs    []proto.BrokerRequest
		code    errcode.Code // of the last reply
	}{
		{"image out of range", true, []proto.BrokerRequest{{Image: 1, Info: qcow2Backed("")}}, errcode.WorkerProtocol},
		{"negative image", true, []proto.BrokerRequest{{Image: -1, Info: qcow2Backed("")}}, errcode.WorkerProtocol},
		{"undescribed", true, []proto.BrokerRequest{{Image: 0, Open: proto.OpenBacking}}, errcode.WorkerProtocol},
		{"described twice", true, []proto.BrokerRequest{{Image: 0, Info: qcow2Backed("")}, {Image: 0, Info: qcow2Backed("")}}, errcode.WorkerProtocol},
		{"format other than asked", true, []proto.BrokerRequest{{Image: 0, Info: raw}}, errcode.WorkerProtocol},
		{"backing of an operation on the top alone", false, []proto.BrokerRequest{{Image: 0, Info: qcow2Backed("base.img"), Open: proto.OpenBacking}}, errcode.WorkerProtocol},
		{"backing without a name", true, []proto.BrokerRequest{{Image: 0, Info: qcow2Backed(""), Open: proto.OpenBacking}}, errcode.WorkerProtocol},
		{"new backing without a rebase", true, []proto.BrokerRequest{{Image: 0, Info: qcow2Backed(""), Open: proto.OpenNewBacking}}, errcode.WorkerProtocol},
		{"unknown open", true, []proto.BrokerRequest{{Image: 0, Info: qcow2Backed(""), Open: "/etc/passwd"}}, errcode.WorkerProtocol},
		{"raw guessed", true, []proto.BrokerRequest{
			{Image: 0, Info: &proto.Info{Format: "qcow2", BackingFilename: "base.img"}, Open: proto.OpenBacking},
			{Image: 1, Info: raw},
		}, errcode.WorkerProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBroker(t, p, dir, tc.backing)
			var reply proto.BrokerReply
			for _, req := range tc.reqs {
				reply, _ = b.Answer(req)
			}
			if reply.Error == nil || reply.Error.Code != tc.code {
				t.Fatalf("reply %+v, want refusal %s", reply, tc.code)
			}
		})
	}
}

// TestBrokerChain walks a chain as a worker does: each answer names the new
// member and comes with one read-only descriptor; the chain is refused past
// MaxDepth; the host's Reopen decides what is writable.
func TestBrokerChain(t *testing.T) {
	dir, p := brokerFixture(t)
	b := newTestBroker(t, p, dir, true)
	b.Reopen = func(c *Chain) ([]int, error) { return []int{len(c.Images) - 1}, nil }
	reply, files := b.Answer(proto.BrokerRequest{Image: 0, Info: qcow2Backed("l0.img"), Open: proto.OpenBacking})
	if reply.Error != nil || len(files) != 1 || reply.Image != 1 || reply.Writable || reply.Format != "qcow2" || reply.Name != filepath.Join(dir, "l0.img") {
		t.Fatalf("reply %+v with %d descriptors", reply, len(files))
	}
	if fl, _ := unix.FcntlInt(files[0].Fd(), unix.F_GETFL, 0); fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Errorf("backing file opened with flags %#x, want read-only", fl)
	}
	if err := b.Described(); errcode.Of(err) != errcode.WorkerProtocol {
		t.Errorf("Described() with an undescribed member: %v", err)
	}
	// A chain of MaxDepth backing files below the top is allowed; one more
	// is not.
	for i := 1; i < MaxDepth; i++ {
		reply, _ = b.Answer(proto.BrokerRequest{Image: i, Info: qcow2Backed(fmt.Sprintf("l%d.img", i)), Open: proto.OpenBacking})
		if reply.Error != nil || reply.Image != i+1 {
			t.Fatalf("member %d: reply %+v", i+1, reply)
		}
	}
	reply, _ = b.Answer(proto.BrokerRequest{Image: MaxDepth, Info: qcow2Backed(fmt.Sprintf("l%d.img", MaxDepth)), Open: proto.OpenBacking})
	if reply.Error == nil || reply.Error.Code != errcode.BackingChainTooDeep {
		t.Fatalf("member %d: reply %+v, want BACKING_CHAIN_TOO_DEEP", MaxDepth+1, reply)
	}

	// The end of a shorter chain: the last member is reopened writable.
	b = newTestBroker(t, p, dir, true)
	b.Reopen = func(c *Chain) ([]int, error) { return []int{len(c.Images) - 1}, nil }
	b.Answer(proto.BrokerRequest{Image: 0, Info: qcow2Backed("base.img"), Open: proto.OpenBacking})
	reply, files = b.Answer(proto.BrokerRequest{Image: 1, Info: qcow2Backed("")})
	if reply.Error != nil || len(files) != 1 || len(reply.Reopened) != 1 || reply.Reopened[0] != 1 {
		t.Fatalf("end of chain: reply %+v with %d descriptors", reply, len(files))
	}
	if fl, _ := unix.FcntlInt(files[0].Fd(), unix.F_GETFL, 0); fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("reopened base has flags %#x, want read-write", fl)
	}
	if err := b.Described(); err != nil {
		t.Error(err)
	}
	if n := len(b.Chain().Images); n != 2 {
		t.Errorf("chain of %d images, want 2", n)
	}
}

// TestBrokerNewBacking plays the worker of a rebase asking for its new
// backing file.
func TestBrokerNewBacking(t *testing.T) {
	dir, p := brokerFixture(t)
	for _, tc := range []struct {
		name, newBacking, format string
		safe                     bool
		code                     errcode.Code
		same                     int // the old member it is, or 0
	}{
		{"outside", "../outside/secret.img", "", true, errcode.BackingPathOutsideRoot, 0},
		{"json", "json:{}", "", true, errcode.BackingProtocol, 0},
		{"itself", "top.img", "", true, errcode.RebaseCreatesLoop, 0},
		{"itself by a symlink", "alias.img", "", false, errcode.RebaseCreatesLoop, 0},
		{"in the old chain", "base.img", "", true, "", 1},
		{"in the old chain, another format", "base.img", "raw", true, errcode.FormatMismatch, 0},
		{"another file", "other.img", "qcow2", true, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBroker(t, p, dir, tc.safe)
			b.NewBacking, b.NewFormat = tc.newBacking, tc.format
			if tc.safe {
				b.Answer(proto.BrokerRequest{Image: 0, Info: qcow2Backed("base.img"), Open: proto.OpenBacking})
				b.Answer(proto.BrokerRequest{Image: 1, Info: qcow2Backed("")})
			} else {
				b.Answer(proto.BrokerRequest{Image: 0, Info: qcow2Backed("base.img")})
			}
			reply, files := b.Answer(proto.BrokerRequest{Image: 0, Open: proto.OpenNewBacking})
			switch {
			case tc.code != "":
				if reply.Error == nil || reply.Error.Code != tc.code || len(files) != 0 {
					t.Fatalf("reply %+v with %d descriptors, want refusal %s", reply, len(files), tc.code)
				}
			case tc.same > 0:
				if !reply.Same || reply.Image != tc.same || len(files) != 0 {
					t.Fatalf("reply %+v with %d descriptors, want image %d", reply, len(files), tc.same)
				}
			default:
				if reply.Error != nil || len(files) != 1 || reply.Writable {
					t.Fatalf("reply %+v with %d descriptors", reply, len(files))
				}
				// The new backing's chain may not come back to the overlay.
				reply, _ = b.Answer(proto.BrokerRequest{Image: reply.Image, Info: qcow2Backed("alias.img"), Open: proto.OpenBacking})
				if reply.Error == nil || reply.Error.Code != errcode.RebaseCreatesLoop {
					t.Fatalf("new chain back to the overlay: reply %+v", reply)
				}
			}
		})
	}
}

// TestBrokerKnown gives the broker a chain the host opened beforehand: the
// worker is answered with those files, writable where the host made them so,
// and a file that is not the known one is IMAGE_CHANGED.
func TestBrokerKnown(t *testing.T) {
	dir, p := brokerFixture(t)
	known := func() *Chain {
		b := newTestBroker(t, p, dir, true)
		b.Answer(proto.BrokerRequest{Image: 0, Info: qcow2Backed("base.img"), Open: proto.OpenBacking})
		b.Answer(proto.BrokerRequest{Image: 1, Info: qcow2Backed("")})
		return b.Chain()
	}
	for _, tc := range []struct {
		name, backing string
		code          errcode.Code
	}{
		{"the known file", "base.img", ""},
		{"another file", "other.img", errcode.ImageChanged},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := known()
			b := NewBroker(p, kc.Top(), "qcow2", false)
			b.Backing, b.Known, b.KnownWritable = true, kc, []int{1}
			reply, files := b.Answer(proto.BrokerRequest{Image: 0, Info: qcow2Backed(tc.backing), Open: proto.OpenBacking})
			if tc.code != "" {
				if reply.Error == nil || reply.Error.Code != tc.code {
					t.Fatalf("reply %+v, want %s", reply, tc.code)
				}
				return
			}
			if reply.Error != nil || len(files) != 1 || files[0] != kc.Images[1].File || !reply.Writable {
				t.Fatalf("reply %+v with %d descriptors, want the known base, writable", reply, len(files))
			}
			if reply, _ := b.Answer(proto.BrokerRequest{Image: 1, Info: qcow2Backed("")}); reply.Error != nil {
				t.Fatalf("end of the chain: %+v", reply)
			}
		})
	}
}
