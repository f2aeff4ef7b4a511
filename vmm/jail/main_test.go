package jail_test

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/jail"
	"instarfs/vmm/sandboxtest/testworker"
)

// TestMain makes the test binary its own worker: executed as
// proto.WorkerArg0, it confines itself as the product worker does and serves
// the operations of the conformance suite.
func TestMain(m *testing.M) {
	if os.Args[0] == proto.WorkerArg0 {
		testworker.Main(jail.Confine)
	}
	if v := os.Getenv(landlockThreadsEnv); v != "" {
		jail.LandlockThreads(8, v == "drop-admin")
	}
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_GETPID, 0, 0, 0); e == syscall.ENOTSUP {
		fmt.Fprintln(os.Stderr, "vmm/jail tests need a binary built with CGO_ENABLED=0")
		os.Exit(1)
	}
	vmm.UseWorker("/proc/self/exe")
	os.Exit(m.Run())
}
