package worker

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/proto"
)

// sh runs a shell script in dir; tests use it to build images with qemu-img and
// qemu-io, the oracle.
func sh(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// openChainFiles opens the chain of top the way the host would hand it over:
// names and formats taken from qemu-img info --backing-chain.
func openChainFiles(t *testing.T, dir, top string) []member {
	t.Helper()
	var chain []member
	for _, o := range openChain(t, dir, top) {
		chain = append(chain, o.member())
	}
	return chain
}

func TestChainMapMatchesQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	tests := []struct {
		name   string
		script string
		top    string
	}{
		{"empty", `qemu-img create -q -f qcow2 a.qcow2 64M`, "a.qcow2"},
		{"data-zero-discard", `qemu-img create -q -f qcow2 a.qcow2 64M
			qemu-io -c 'write -P 1 0 128k' -c 'write -z 1M 64k' -c 'write -P 2 2M 64k' -c 'discard 2M 64k' -c 'write -P 3 3M 4k' a.qcow2 >/dev/null`, "a.qcow2"},
		{"v2", `qemu-img create -q -f qcow2 -o compat=0.10 a.qcow2 16M
			qemu-io -c 'write -P 1 0 128k' -c 'write -z 1M 64k' a.qcow2 >/dev/null`, "a.qcow2"},
		{"extended-l2", `qemu-img create -q -f qcow2 -o extended_l2=on a.qcow2 16M
			qemu-io -c 'write -P 1 4k 4k' -c 'write -z 64k 8k' -c 'write -P 2 1M 64k' a.qcow2 >/dev/null`, "a.qcow2"},
		{"chain-short-backing", `qemu-img create -q -f qcow2 base.qcow2 32M
			qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 30M 2M' base.qcow2 >/dev/null
			qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 64M
			qemu-io -c 'write -P 3 64k 64k' -c 'write -z 512k 64k' -c 'write -P 4 40M 64k' top.qcow2 >/dev/null`, "top.qcow2"},
		{"three-levels", `qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 16M
			qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null
			qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
			qemu-io -c 'write -P 2 128k 64k' -c 'write -z 512k 64k' mid.qcow2 >/dev/null
			qemu-img create -q -f qcow2 -o cluster_size=2M -b mid.qcow2 -F qcow2 top.qcow2
			qemu-io -c 'write -P 3 4M 4k' top.qcow2 >/dev/null`, "top.qcow2"},
		{"compressed", `qemu-img create -q -f qcow2 src.qcow2 8M
			qemu-io -c 'write -P 1 0 1M' src.qcow2 >/dev/null
			qemu-img convert -c -O qcow2 src.qcow2 a.qcow2`, "a.qcow2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sh(t, dir, tt.script)
			var want []proto.MapEntry
			if err := json.Unmarshal(qemutest.Img(t, dir, "map", "--output=json", tt.top), &want); err != nil {
				t.Fatal(err)
			}
			got, err := chainMap(openChainFiles(t, dir, tt.top), 0)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("map differs\n got: %s\nwant: %s", mapString(got), mapString(want))
			}
		})
	}
}

func mapString(es []proto.MapEntry) string {
	var b strings.Builder
	for _, e := range es {
		j, _ := json.Marshal(e)
		b.WriteString("\n  " + string(j))
	}
	return b.String()
}

// TestChainMapEmptyImage: an image of virtual size 0 has no rows, and the
// worker's answer must still be a result ("[]"), not null.
func TestChainMapEmptyImage(t *testing.T) {
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	qemutest.Create(t, filepath.Join(dir, "a.qcow2"), "qcow2", "0")
	got, err := chainMap(openChainFiles(t, dir, "a.qcow2"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(got); string(b) != "[]" {
		t.Errorf("map of an empty image encodes as %s, want []", b)
	}
}
