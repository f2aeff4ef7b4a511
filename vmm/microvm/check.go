package microvm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// Report is the outcome of Check, for `instarfs sandbox-check
// --sandbox=microvm`.
type Report struct {
	Backend string `json:"backend"`
	// Accel is the accelerator the command line selected.
	Accel string `json:"accel"`
	// Accelerators reports each accelerator tried, KVM first.
	Accelerators []AccelReport `json:"accelerators"`
	// Violation is what a forbidden system call in the guest did under
	// Accel; ViolationOK is true when it was SANDBOX_VIOLATION.
	Violation   string `json:"violation,omitempty"`
	ViolationOK bool   `json:"violation_ok"`
	OK          bool   `json:"ok"`
}

// AccelReport is one accelerator's boot.
type AccelReport struct {
	Name string `json:"name"`
	// Works is true when a guest booted and answered a noop request.
	Works bool `json:"works"`
	// Boot is the time from starting QEMU to the guest's answer.
	Boot  time.Duration `json:"boot_ns,omitempty"`
	Error string        `json:"error,omitempty"`
}

// Check boots a guest with each accelerator (KVM, then TCG), timing a noop
// request, and checks under the selected one that a forbidden system call
// kills the worker. OK is true when the selected accelerator works and the
// violation was caught.
func Check(ctx context.Context, s *Sandbox) *Report {
	r := &Report{Backend: s.Name(), Accel: s.Accelerator()}
	for _, accel := range []string{KVM, TCG} {
		one := &Sandbox{Accel: accel, GuestDir: s.GuestDir, Log: s.Log}
		a := AccelReport{Name: accel}
		start := time.Now()
		_, err := one.Run(ctx, vmm.Job{Request: proto.Request{Op: proto.OpNoop}})
		if err != nil {
			a.Error = err.Error()
		} else {
			a.Works, a.Boot = true, time.Since(start)
		}
		r.Accelerators = append(r.Accelerators, a)
		if accel == r.Accel {
			r.OK = a.Works
		}
	}
	if r.OK {
		_, err := s.Run(ctx, vmm.Job{Request: proto.Request{Op: proto.OpSandboxViolate}})
		r.ViolationOK = errcode.Of(err) == errcode.SandboxViolation
		r.Violation = "openat(/) in the guest: "
		if err != nil {
			r.Violation += err.Error()
		} else {
			r.Violation += "succeeded"
		}
		r.OK = r.ViolationOK
	}
	return r
}

// String renders the report for a terminal.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sandbox: %s (accelerator %s)\n", r.Backend, r.Accel)
	for _, a := range r.Accelerators {
		if a.Works {
			fmt.Fprintf(&b, "  %-4s works: boot to answer %.2f s\n", a.Name, a.Boot.Seconds())
		} else {
			fmt.Fprintf(&b, "  %-4s unavailable: %s\n", a.Name, a.Error)
		}
	}
	if r.Violation != "" {
		ok := "FAIL"
		if r.ViolationOK {
			ok = "ok"
		}
		fmt.Fprintf(&b, "violation check: %s %s\n", ok, r.Violation)
	}
	if r.Accel == TCG {
		fmt.Fprintf(&b, "warning: TCG emulates the guest in the QEMU process: it is not a security boundary\n")
	}
	res := "FAILED"
	if r.OK {
		res = "OK"
	}
	fmt.Fprintf(&b, "result: %s\n", res)
	return b.String()
}
