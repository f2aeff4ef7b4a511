package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/vmmtest"
)

// TestProbeCache checks that a probe runs a worker once per state of the
// file, and that a failed run is not remembered.
func TestProbeCache(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.qcow2")
	if err := os.WriteFile(path, make([]byte, 512), 0o644); err != nil {
		t.Fatal(err)
	}
	policy, err := chainmodel.NewPolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer policy.Close()
	sb := vmmtest.New(map[string]vmmtest.Answer{proto.OpProbe: vmmtest.Result(`{"format":"qcow2","virtual-size":1048576,"dirty-flag":false}`)})
	o := &Opener{Sandbox: sb, Policy: policy}
	probe := func() error {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, _, err = o.Probe(context.Background(), f, path, "", false)
		return err
	}
	steps := []struct {
		what   string
		change func()
		code   errcode.Code // of the probe's error; "" for none
		runs   int          // probe runs so far
	}{
		{"first probe", func() {}, "", 1},
		{"unchanged", func() {}, "", 1},
		{"unchanged, again", func() {}, "", 1},
		{"grown", func() { os.WriteFile(path, make([]byte, 1024), 0o644) }, "", 2},
		{"grown, again", func() {}, "", 2},
		{"touched, the worker crashes", func() {
			os.Chtimes(path, time.Unix(1, 0), time.Unix(1, 0))
			sb.Set(proto.OpProbe, vmmtest.Crash.Answer())
		}, errcode.WorkerCrashed, 3},
		{"crash not remembered", func() {}, errcode.WorkerCrashed, 4},
	}
	for _, s := range steps {
		s.change()
		if err := probe(); err != nil && errcode.Of(err) != s.code || err == nil && s.code != "" {
			t.Errorf("%s: %v, want code %q", s.what, err, s.code)
		}
		if got := sb.Runs(proto.OpProbe); got != s.runs {
			t.Errorf("%s: %d probe runs, want %d", s.what, got, s.runs)
		}
	}
}

// TestInfoSize compares the estimate of a probe result's size with the heap
// that decoding it really takes: the estimate must not be far below (the
// cache's budget would be a fiction) nor far above (the cache would hold
// much less than its budget allows).
func TestInfoSize(t *testing.T) {
	yes := true
	icount := int64(7)
	for _, tc := range []struct {
		name string
		info proto.Info
	}{
		{"65536 snapshots", proto.Info{Format: "qcow2", VirtualSize: 1 << 30, ClusterSize: 65536,
			FormatSpecific: &proto.FormatSpecific{Type: "qcow2", Data: &proto.Qcow2Specific{Compat: "1.1", CompressionType: "zlib", Corrupt: &yes}},
			Snapshots:      snapshots(65536, &icount)}},
		{"4096 vmdk extents", proto.Info{Format: "vmdk", VirtualSize: 1 << 30,
			FormatSpecific: &proto.FormatSpecific{Type: "vmdk", Data: &proto.VmdkSpecific{CreateType: "twoGbMaxExtentSparse", Extents: extents(4096)}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := json.Marshal(tc.info)
			if err != nil {
				t.Fatal(err)
			}
			const copies = 8
			decoded := make([]proto.Info, copies)
			var warm proto.Info // the first decode leaves garbage of its own
			if err := DecodeResult(doc, &warm); err != nil {
				t.Fatal(err)
			}
			before := heapInUse()
			for i := range decoded {
				if err := DecodeResult(doc, &decoded[i]); err != nil {
					t.Fatal(err)
				}
			}
			real := (heapInUse() - before) / copies
			est := infoSize(decoded[0])
			runtime.KeepAlive(decoded)
			t.Logf("estimate %d bytes, heap %d bytes (JSON %d)", est, real, len(doc))
			if est < real/2 || est > real*2 {
				t.Errorf("estimate %d bytes for a result that takes %d bytes of heap", est, real)
			}
		})
	}
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

func snapshots(n int, icount *int64) []proto.Snapshot {
	out := make([]proto.Snapshot, n)
	for i := range out {
		out[i] = proto.Snapshot{ID: fmt.Sprint(i + 1), Name: fmt.Sprintf("snapshot-%d", i), DateSec: 1700000000, ICount: icount}
	}
	return out
}

func extents(n int) []proto.VmdkExtent {
	out := make([]proto.VmdkExtent, n)
	for i := range out {
		out[i] = proto.VmdkExtent{Filename: fmt.Sprintf("disk-s%03d.vmdk", i+1), VirtualSize: 2 << 30, ClusterSize: 65536, Format: "SPARSE"}
	}
	return out
}
