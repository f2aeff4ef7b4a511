package microvm

import (
	"context"
	"path/filepath"
	"testing"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/internal/qemutest"
)

// TestBootsKnownChain counts the guests of operations on a chain of two
// images: describing it takes one (the base read through the port), and a
// commit once the probe cache describes the chain one more, the members
// attached from the start, where a commit of an unknown chain takes two.
func TestBootsKnownChain(t *testing.T) {
	s := tcg(t)
	qemutest.NeedQemu(t)
	dir := t.TempDir()
	qemutest.Img(t, dir, "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
	qemutest.Img(t, dir, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
	qemutest.IO(t, filepath.Join(dir, "top.qcow2"), "qcow2", "write -P 0x5a 64k 64k")
	policy, err := chainmodel.NewPolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer policy.Close()
	o := &ctl.Opener{Sandbox: s, Policy: policy}
	top := filepath.Join(dir, "top.qcow2")

	c, err := o.OpenChain(context.Background(), top, ctl.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := s.boots.Load(); n != 1 || len(c.Images) != 2 {
		t.Fatalf("describing the chain: %d boots, %d images; want 1 boot, 2 images", n, len(c.Images))
	}
	if _, err := ctl.Commit(context.Background(), o, top, ctl.CommitRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	if n := s.boots.Load() - 1; n != 1 {
		t.Errorf("a commit of a chain the cache describes: %d boots, want 1", n)
	}
	qemutest.IO(t, filepath.Join(dir, "base.qcow2"), "qcow2", "read -P 0x5a 64k 64k")
}
