package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"instarfs/internal/qemutest"
)

// Costs that must follow an image's allocated data and metadata, not its
// virtual size: info, map and check of a 1 TiB image holding a few
// clusters take little time and little memory.
const (
	boundsMaxCPU  = 2 * time.Second  // user+system of the CLI and its worker
	boundsMaxWall = 10 * time.Second // generous: the machine may be busy
	boundsMaxRSS  = 200 << 20        // bytes, of the CLI or its worker
)

// TestBoundsHugeVirtualSize runs info, map and check on 1 TiB images with a
// few scattered writes: qcow2, qcow2 with extended L2 entries, an overlay over
// such a qcow2, and a monolithicSparse vmdk (whose grain tables qemu
// preallocates: 64 MiB of metadata).
func TestBoundsHugeVirtualSize(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1 TiB images")
	}
	dir := t.TempDir()
	writes := "-c 'write -P 0x11 0 64k' -c 'write -P 0x22 1G 64k' -c 'write -P 0x33 300G 128k' " +
		"-c 'write -P 0x44 777G 4k' -c 'write -z 900G 64k' -c 'write -P 0x55 1023G 64k'"
	for _, sh := range []string{
		"qemu-img create -q -f qcow2 big.qcow2 1T",
		"qemu-io -f qcow2 " + writes + " big.qcow2",
		"qemu-img create -q -f qcow2 -o extended_l2=on xl2.qcow2 1T",
		"qemu-io -f qcow2 " + writes + " xl2.qcow2",
		"qemu-img create -q -f qcow2 -b big.qcow2 -F qcow2 top.qcow2",
		"qemu-io -f qcow2 -c 'write -P 0x66 1G 4k' -c 'write -P 0x77 500G 64k' top.qcow2",
		"qemu-img create -q -f vmdk big.vmdk 1T",
		"qemu-io -f vmdk " + writes + " big.vmdk",
	} {
		cmd := exec.Command("sh", "-c", sh)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", sh, err, out)
		}
	}
	for _, image := range []string{"big.qcow2", "xl2.qcow2", "top.qcow2", "big.vmdk"} {
		for _, op := range []string{"info", "map", "check"} {
			t.Run(image+" "+op, func(t *testing.T) {
				args := []string{op, "--output=json", image}
				if op == "info" {
					args = []string{op, "--backing-chain", "--output=json", image}
				}
				r := runBounded(t, dir, time.Minute, args...)
				qemu := "not run"
				if image != "big.vmdk" || op != "map" { // qemu-img takes seconds here
					qemu = timeQemu(t, dir, args...).Round(time.Millisecond).String()
				}
				t.Logf("instarfs %s: %v wall, %v cpu, max RSS %d MiB (qemu-img: %s)",
					strings.Join(args, " "), r.dur.Round(time.Millisecond), r.cpu.Round(time.Millisecond), r.maxRSS>>20, qemu)
				if r.code != 0 {
					t.Fatalf("exit %d\nstderr: %s", r.code, r.stderr)
				}
				if r.cpu > boundsMaxCPU {
					t.Errorf("used %v of CPU time, more than %v", r.cpu, boundsMaxCPU)
				}
				if r.dur > boundsMaxWall {
					t.Errorf("took %v, more than %v", r.dur, boundsMaxWall)
				}
				if r.maxRSS > boundsMaxRSS {
					t.Errorf("max RSS %d MiB, more than %d MiB", r.maxRSS>>20, boundsMaxRSS>>20)
				}
			})
		}
	}
}

// timeQemu runs qemu-img with args in dir and returns its wall-clock time, for
// the log.
func timeQemu(t *testing.T, dir string, args ...string) time.Duration {
	t.Helper()
	cmd := qemutest.System.Command(context.Background(), t, dir, "qemu-img", args...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("qemu-img %v: %v\n%.500s", args, err, out)
	}
	return time.Since(start)
}
