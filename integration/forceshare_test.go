package integration

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
)

// TestForceShare: while qemu-io holds an image read-write (as a running VM
// would), info, map and check refuse it with IMAGE_IN_USE, and with -U or
// --force-share print what qemu-img -U prints.
func TestForceShare(t *testing.T) {
	dir := t.TempDir()
	shellIn(t, dir, `
qemu-img create -q -f qcow2 base.qcow2 16M
qemu-io -c 'write -P 0x11 0 2M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x5a 1M 2M' top.qcow2 >/dev/null`)
	q := qemutest.System.Command(context.Background(), t, dir, "qemu-io", "-c", "sleep 60000", "top.qcow2")
	var qout bytes.Buffer
	q.Stdout, q.Stderr = &qout, &qout
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Process.Kill(); q.Wait() })
	if !waitLocked(t, dir, "top.qcow2") {
		t.Fatalf("qemu-io never locked top.qcow2: %s", qout.String())
	}
	for _, args := range [][]string{
		{"info"}, {"info", "--output=json"}, {"info", "--backing-chain"}, {"info", "--output=json", "--backing-chain"},
		{"map"}, {"map", "--output=json"}, {"check"}, {"check", "--output=json"},
	} {
		name := strings.Join(args, " ")
		if r := execIn(t, dir, binary, append(args, "top.qcow2")...); r.code != 1 || !bytes.Contains(r.stderr, []byte("IMAGE_IN_USE")) {
			t.Errorf("%s without -U: exit %d, %s", name, r.code, r.stderr)
		}
		want := qemuImg(t, dir, append(args, "-U", "top.qcow2")...)
		for _, flag := range []string{"-U", "--force-share"} {
			got := execIn(t, dir, binary, append(append(args, flag), "top.qcow2")...)
			if got.code != want.code || !bytes.Equal(got.stdout, want.stdout) {
				t.Errorf("%s %s: exit %d\n%s%s\nqemu-img -U: exit %d\n%s", name, flag, got.code, got.stdout, got.stderr, want.code, want.stdout)
			}
		}
	}
}
