package microvm

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// chainBroker opens base as the backing file of image 0 and refuses every
// other file, as the policy refuses a name outside the roots.
type chainBroker struct{ base *os.File }

func (b chainBroker) Answer(req proto.BrokerRequest) (proto.BrokerReply, []*os.File) {
	if req.Image == 0 && req.Open == proto.OpenBacking {
		return proto.BrokerReply{Image: 1, Name: "base", Format: "raw"}, []*os.File{b.base}
	}
	if req.Open != "" {
		return proto.BrokerReply{Error: errcode.New(errcode.BackingPathOutsideRoot, "'/etc/passwd' is outside the allowed directories")}, nil
	}
	return proto.BrokerReply{}, nil
}

// testRelay is a relay whose broker opened base (10 bytes) for the
// question open, as in a first boot.
func testRelay(t *testing.T, open proto.BrokerRequest) *relay {
	t.Helper()
	dir := t.TempDir()
	var files []*os.File
	for _, name := range []string{"top", "base"} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(name+" bytes"), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	r := newRelay(vmm.Job{
		Request: proto.Request{Images: []proto.ImageRef{{Name: "top"}}},
		Files:   files[:1],
		Broker:  chainBroker{base: files[1]},
	})
	if got := ask(t, r, open); !got.Remote || got.Size != 10 || got.Drive != 0 || got.Image != 1 {
		t.Fatalf("first boot: the base came as %+v, want remote, 10 bytes", got)
	}
	return r
}

// ask puts req to r as the guest does and returns the answer.
func ask(t *testing.T, r *relay, req proto.BrokerRequest) proto.BrokerReply {
	t.Helper()
	b, _ := json.Marshal(req)
	var out bytes.Buffer
	if err := r.question(b, &out); err != nil {
		t.Fatalf("question %+v: %v", req, err)
	}
	kind, body, err := proto.ReadPortFrame(&out, proto.MaxBrokerBytes)
	if err != nil || kind != proto.PortAnswer {
		t.Fatalf("answer to %+v: kind %q, %v", req, kind, err)
	}
	var reply proto.BrokerReply
	if err := proto.Decode(body, &reply); err != nil {
		t.Fatal(err)
	}
	return reply
}

var openBase = proto.BrokerRequest{Image: 0, Info: &proto.Info{Format: "qcow2", BackingFilename: "base"}, Open: proto.OpenBacking}

// TestRelayReads reads a member through the port, within its bounds and
// outside them: the host refuses a read of a member it attached or did not
// open, at a negative offset or past the end, of no bytes or more than
// proto.MaxPortRead, and the run ends with WORKER_PROTOCOL.
func TestRelayReads(t *testing.T) {
	for _, tc := range []struct {
		name string
		read proto.PortReadArgs
		want string // the bytes; "" for a refusal
	}{
		{"head", proto.PortReadArgs{Image: 1, Offset: 0, Length: 4}, "base"},
		{"to the end", proto.PortReadArgs{Image: 1, Offset: 5, Length: 100}, "bytes"},
		{"attached top", proto.PortReadArgs{Image: 0, Offset: 0, Length: 4}, ""},
		{"no such member", proto.PortReadArgs{Image: 2, Offset: 0, Length: 4}, ""},
		{"negative member", proto.PortReadArgs{Image: -1, Offset: 0, Length: 4}, ""},
		{"negative offset", proto.PortReadArgs{Image: 1, Offset: -1, Length: 4}, ""},
		{"past the end", proto.PortReadArgs{Image: 1, Offset: 11, Length: 1}, ""},
		{"no bytes", proto.PortReadArgs{Image: 1, Offset: 0, Length: 0}, ""},
		{"too long", proto.PortReadArgs{Image: 1, Offset: 0, Length: proto.MaxPortRead + 1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRelay(t, openBase)
			b, _ := json.Marshal(tc.read)
			var out bytes.Buffer
			err := r.readFor(b, &out)
			kind, body, ferr := proto.ReadPortFrame(&out, proto.MaxPortRead)
			if ferr != nil {
				t.Fatal(ferr)
			}
			if tc.want != "" {
				if err != nil || kind != proto.PortData || string(body) != tc.want {
					t.Errorf("read %+v: %q %q, %v; want %q", tc.read, kind, body, err, tc.want)
				}
				return
			}
			var e errcode.Error
			if kind != proto.PortRefused || proto.Decode(body, &e) != nil || e.Code != errcode.WorkerProtocol || errcode.Of(err) != errcode.WorkerProtocol {
				t.Errorf("read %+v: %q %s, %v; want a WORKER_PROTOCOL refusal", tc.read, kind, body, err)
			}
		})
	}
}

// TestRelaySecondBoot replays the first boot's answers to the second guest,
// by drive, and refuses anything else: another question (CHAIN_CHANGED, the
// run's error), a read through the port of a member now attached, and a
// second request for the members.
func TestRelaySecondBoot(t *testing.T) {
	r := testRelay(t, openBase)
	refused := proto.BrokerRequest{Image: 1, Info: &proto.Info{Format: "raw", BackingFilename: "/etc/passwd"}, Open: proto.OpenBacking}
	if got := ask(t, r, refused); got.Error == nil || got.Error.Code != errcode.BackingPathOutsideRoot {
		t.Fatalf("first boot: a name the policy refuses got %+v", got)
	}
	r.bootAgain()
	if len(r.drives) != 1 || r.drives[0].File != r.members[1] || r.drives[0].Ref.Size != 10 {
		t.Fatalf("second boot drives %+v, want the base", r.drives)
	}
	if got := ask(t, r, openBase); got.Remote || got.Drive != 1 || got.Image != 1 || got.Size != 10 {
		t.Errorf("second boot: the base came as %+v, want drive 1", got)
	}
	if got := ask(t, r, refused); got.Error == nil || got.Error.Code != errcode.BackingPathOutsideRoot {
		t.Errorf("second boot: the refusal replayed as %+v", got)
	}
	if err := r.failure(); err != nil {
		t.Fatalf("the same questions failed the run: %v", err)
	}
	other := proto.BrokerRequest{Image: 1, Info: &proto.Info{Format: "raw", BackingFilename: "elsewhere"}, Open: proto.OpenBacking}
	if got := ask(t, r, other); got.Error == nil || got.Error.Code != errcode.ChainChanged {
		t.Errorf("second boot: a new question got %+v, want CHAIN_CHANGED", got)
	}
	if errcode.Of(r.failure()) != errcode.ChainChanged {
		t.Errorf("the run ends with %v, want CHAIN_CHANGED", r.failure())
	}

	b, _ := json.Marshal(proto.PortReadArgs{Image: 1, Offset: 0, Length: 4})
	if err := r.readFor(b, &bytes.Buffer{}); errcode.Of(err) != errcode.WorkerProtocol {
		t.Errorf("second boot: a read of an attached member: %v, want WORKER_PROTOCOL", err)
	}
	var in bytes.Buffer
	proto.WritePortFrame(&in, proto.PortDrives, nil)
	stopped := false
	r.serve(&in, &bytes.Buffer{}, func() { stopped = true })
	if !stopped || r.again {
		t.Errorf("second boot: asking for the members again did not stop the guest (%v) or asked a third boot (%v)", stopped, r.again)
	}
}
