package ctl

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/vmmtest"
)

// These fuzz targets feed arbitrary worker results to the host's side of info,
// map and check, through a sandbox that answers with the fuzzer's bytes. The
// host must never panic, must refuse with a named code (never INTERNAL), and
// what it accepts must satisfy the invariants its renderers rely on.

// Worker results of real images, the seeds of every target.
const (
	seedProbeQcow2 = `{"format":"qcow2","virtual-size":4194304,"cluster-size":65536,"backing-filename":"b1.qcow2","backing-filename-format":"qcow2","dirty-flag":false,` +
		`"format-specific":{"type":"qcow2","data":{"compat":"1.1","compression-type":"zlib","lazy-refcounts":false,"refcount-bits":16,"corrupt":false,"extended-l2":false}},` +
		`"snapshots":[{"icount":0,"vm-clock-nsec":0,"name":"s1","date-sec":1795801756,"date-nsec":447783000,"vm-clock-sec":0,"id":"1","vm-state-size":0}]}`
	seedProbeVmdk = `{"format":"vmdk","virtual-size":4194304,"cluster-size":65536,"dirty-flag":false,"format-specific":{"type":"vmdk","data":` +
		`{"cid":3942926646,"parent-cid":4294967295,"create-type":"streamOptimized","extents":[{"virtual-size":4194304,"cluster-size":65536,"format":"","compressed":true}]}}}`
	seedCheck = `{"supported":true,"check_errors":0,"corruptions":0,"leaks":0,"image_end_offset":589824,"total_clusters":64,` +
		`"allocated_clusters":2,"fragmented_clusters":1,"compressed_clusters":1,"messages":null}`
)

// emptyImage returns the path of an empty file in a new directory, the image
// the fake worker describes.
func emptyImage(f *testing.F) string {
	path := filepath.Join(f.TempDir(), "img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		f.Fatal(err)
	}
	return path
}

// fakeTop is what the fake worker reads in the top image.
var fakeTop = proto.Info{Format: "qcow2", VirtualSize: 4194304, ClusterSize: 65536}

// fakeOpener returns a new Opener (with an empty probe cache) whose worker
// uses sb.
func fakeOpener(t *testing.T, dir string, sb vmm.Sandbox) *Opener {
	p, err := chainmodel.NewPolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return &Opener{Sandbox: sb, Policy: p}
}

// fakeSandbox returns a sandbox whose worker reads fakeTop in the top image
// (telling the broker, in a run with one) and answers each operation with
// answers' result document.
func fakeSandbox(answers map[string][]byte) *vmmtest.Sandbox {
	sb := vmmtest.New(nil)
	for op, doc := range answers {
		sb.Set(op, vmmtest.Answer{Result: doc, Chain: []proto.Info{fakeTop}})
	}
	return sb
}

// probeSandbox returns a sandbox whose worker reads in the top image what doc
// says (an Info) and describes the chain as that top alone. A doc that does
// not decode is sent all the same, without a word to the broker.
func probeSandbox(doc []byte) *vmmtest.Sandbox {
	return vmmtest.Func(func(context.Context, vmm.Job) vmmtest.Answer {
		a := vmmtest.Answer{Result: json.RawMessage(`{"images":[` + string(doc) + `]}`)}
		var info proto.Info
		if DecodeResult(doc, &info) == nil {
			a.Chain = []proto.Info{info}
		}
		return a
	})
}

// TestFuzzSeeds checks that the fuzz targets' fake workers, given the results
// of real images, get them accepted: a target whose every input is refused
// would test nothing past the refusal.
func TestFuzzSeeds(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, seed := range []string{seedProbeQcow2, seedProbeVmdk} {
		if _, err := InfoFor(context.Background(), fakeOpener(t, dir, probeSandbox([]byte(seed))), path, "", false, false); err != nil {
			t.Errorf("info of %s: %v", seed, err)
		}
	}
	o := fakeOpener(t, dir, fakeSandbox(map[string][]byte{proto.OpCheck: []byte(seedCheck)}))
	if _, err := Check(context.Background(), o, path, "", false); err != nil {
		t.Errorf("check of %s: %v", seedCheck, err)
	}
}

// checkRefusal fails t unless err names a code other than INTERNAL.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if c := errcode.Of(err); c == errcode.Internal {
		t.Fatalf("refused with %s: %v", c, err)
	}
}

// FuzzInfo runs info on an image whose probe answers with the fuzzer's bytes,
// and renders what is accepted both ways.
func FuzzInfo(f *testing.F) {
	for _, s := range []string{seedProbeQcow2, seedProbeVmdk,
		`{"format":"raw","virtual-size":0,"dirty-flag":false}`,
		`{"format":"qcow2","virtual-size":9223372036854775807,"cluster-size":-1,"dirty-flag":true,"snapshots":[{"vm-clock-nsec":-1,"name":"\u001b[2J","date-sec":-9223372036854775808,"date-nsec":0,"vm-clock-sec":9223372036854775807,"id":"","vm-state-size":-5}]}`,
		`{"format":"vmdk","virtual-size":1,"dirty-flag":false,"format-specific":{"type":"vmdk","data":null}}`,
	} {
		f.Add([]byte(s))
	}
	path := emptyImage(f)
	f.Fuzz(func(t *testing.T, res []byte) {
		o := fakeOpener(t, filepath.Dir(path), probeSandbox(res))
		infos, err := InfoFor(context.Background(), o, path, "", false, false)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if len(infos) != 1 {
			t.Fatalf("%d infos for one image", len(infos))
		}
		if in := infos[0]; in.VirtualSize < 0 || in.Filename != path {
			t.Fatalf("accepted info with virtual size %d and file name %q", in.VirtualSize, in.Filename)
		}
		if b := InfoJSON(infos, false); !json.Valid(b) {
			t.Fatalf("info --output=json is not JSON:\n%s", b)
		}
		if b := InfoJSON(infos, true); !json.Valid(b) {
			t.Fatalf("info --backing-chain --output=json is not JSON:\n%s", b)
		}
		InfoHuman(infos)
	})
}

// FuzzMapResult decodes the fuzzer's bytes as the compact rows (proto.MapRows)
// of the map of a chain of 1 to MaxDepth+1 layers whose top has the given
// virtual size. What is accepted must tile the disk with rows of known
// layers, and render.
func FuzzMapResult(f *testing.F) {
	seed := func(rows ...proto.MapEntry) []byte {
		b, err := proto.MapRows(rows).AppendBinary(nil)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	at := func(v int64) *int64 { return &v }
	chain := seed(
		proto.MapEntry{Start: 0, Length: 65536, Depth: 1, Present: true, Data: true, Offset: at(327680)},
		proto.MapEntry{Start: 65536, Length: 983040, Depth: 1, Zero: true},
		proto.MapEntry{Start: 1048576, Length: 65536, Depth: 1, Present: true, Data: true},
		proto.MapEntry{Start: 1114112, Length: 3080192, Zero: true})
	f.Add(chain, int64(4194304), uint8(2))
	f.Add(chain, int64(4194304), uint8(1))
	f.Add(chain, int64(4194303), uint8(2))
	f.Add([]byte{}, int64(0), uint8(1))
	f.Add(seed(proto.MapEntry{Length: 1<<63 - 1, Zero: true}), int64(1<<63-1), uint8(1))
	f.Add(seed(proto.MapEntry{Length: 512, Present: true, Data: true}), int64(512), uint8(1))
	f.Add(seed(proto.MapEntry{Length: 512, Depth: 3, Present: true, Data: true, Offset: at(1 << 62)}), int64(512), uint8(1))
	// A zero-length row, a row past the end, a truncated one.
	f.Add(append(seed(proto.MapEntry{}, proto.MapEntry{Length: 1024, Data: true}), 0x09, 0), int64(512), uint8(1))
	f.Fuzz(func(t *testing.T, res []byte, size int64, layers uint8) {
		if size < 0 {
			return // the probe refuses negative sizes before a map runs
		}
		n := int(layers)%(chainmodel.MaxDepth+1) + 1
		c := &chainmodel.Chain{}
		for i := range n {
			c.Images = append(c.Images, &chainmodel.Image{Name: "layer" + string(rune('a'+i)), Info: proto.Info{Format: "qcow2", VirtualSize: size}})
		}
		doc := []byte(`"` + base64.StdEncoding.EncodeToString(res) + `"`)
		m, err := MapChain(context.Background(), fakeSandbox(map[string][]byte{proto.OpMap: doc}), c, 0)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		var next int64
		for i, e := range m.Entries {
			if e.Start != next || e.Length <= 0 || e.Length > size-next || e.Depth < 0 || e.Depth >= n {
				t.Fatalf("accepted row %d %+v of a map of %d bytes over %d layers (next offset %d)", i, e, size, n, next)
			}
			next += e.Length
		}
		if next != size {
			t.Fatalf("accepted rows covering %d bytes of %d", next, size)
		}
		var back []proto.MapEntry
		if err := json.Unmarshal(m.JSON(), &back); err != nil {
			t.Fatalf("map --output=json is not JSON: %v\n%s", err, m.JSON())
		}
		want := m.Entries
		if len(want) == 0 {
			want = emptyMapRow // qemu-img's one row for an image of size 0
		}
		if !reflect.DeepEqual(back, want) {
			t.Fatalf("map --output=json does not round-trip:\n%s", m.JSON())
		}
		if _, err := m.Human(); err != nil && errcode.Of(err) != errcode.BadArguments {
			t.Fatalf("human map failed with %s: %v", errcode.Of(err), err)
		}
	})
}

// FuzzCheckResult runs check on an image whose check answers with the
// fuzzer's bytes, and renders what is accepted both ways.
func FuzzCheckResult(f *testing.F) {
	for _, s := range []string{seedCheck,
		`{"supported":false,"check_errors":0,"corruptions":0,"leaks":0,"image_end_offset":0,"total_clusters":0,"allocated_clusters":0,"fragmented_clusters":0,"compressed_clusters":0,"messages":null}`,
		`{"supported":true,"check_errors":0,"corruptions":1,"leaks":0,"image_end_offset":0,"total_clusters":0,"allocated_clusters":0,"fragmented_clusters":0,"compressed_clusters":0,"messages":["ERROR: vmdk grain at sector 4294967280 lies past the end of the file"]}`,
		`{"supported":true,"check_errors":-1,"corruptions":-9223372036854775808,"leaks":3,"total_clusters":-1,"allocated_clusters":9223372036854775807,"messages":["\u001b[2J"]}`,
		`{"supported":true,"total_clusters":1,"allocated_clusters":-1,"fragmented_clusters":9223372036854775807}`,
	} {
		f.Add([]byte(s))
	}
	path := emptyImage(f)
	f.Fuzz(func(t *testing.T, res []byte) {
		o := fakeOpener(t, filepath.Dir(path), fakeSandbox(map[string][]byte{proto.OpCheck: res}))
		r, err := Check(context.Background(), o, path, "", false)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if code := r.ExitCode(); !slices.Contains([]int{0, 1, 2, 3, 63}, code) || (code == 63) != !r.Supported {
			t.Fatalf("exit status %d for %+v", code, r.CheckResult)
		}
		if b := r.JSON(); !json.Valid(b) {
			t.Fatalf("check --output=json is not JSON:\n%s", b)
		}
		r.Human()
	})
}
