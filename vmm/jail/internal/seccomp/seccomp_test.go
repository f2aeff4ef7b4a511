package seccomp_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/vmm/jail/internal/seccomp"
	"instarfs/vmm/jail/internal/seccomp/seccomptest"
)

var eperm = seccomp.Errno(unix.EPERM)

func mustVM(t *testing.T, p seccomp.Policy) *seccomptest.VM {
	t.Helper()
	prog, err := p.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	vm, err := seccomptest.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func run(t *testing.T, vm *seccomptest.VM, d seccomptest.Data) seccomp.Action {
	t.Helper()
	a, err := vm.Run(d)
	if err != nil {
		t.Fatalf("running the filter on %+v: %v", d, err)
	}
	return a
}

// edges are argument values around word boundaries and single bits.
var edges = []uint64{
	0, 1, 2, 3, 4, 5, 7, 0x10000, 0x10001, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff,
	1 << 32, 1<<32 | 1, 1<<32 | 4, 4 << 32, 0x10000 << 32, 5 << 32, 5<<32 | 5,
	1 << 40, 1<<40 | 3, 3 << 40, 1 << 62, 1 << 63, 1<<63 | 1, 0xdeadbeef00000001,
	0x00000001deadbeef, 0xdeadbeef, 0xdeadbeef << 32, ^uint64(0), ^uint64(0) >> 32, 0xffffffff00000000,
	^uint64(4), ^uint64(0x10000),
}

// TestConditions checks each kind of condition on every argument position
// against values chosen by hand, then against the definition
// arg&Mask == Value on many values, with the other arguments clear and set.
func TestConditions(t *testing.T) {
	const nr = unix.SYS_READ
	for _, tt := range []struct {
		cond     seccomp.Cond
		allow    []uint64
		disallow []uint64
	}{
		{seccomp.Equal(0, 5), []uint64{5}, []uint64{0, 4, 6, 5 << 32, 5<<32 | 5, 1<<32 | 5, 1<<63 | 5, ^uint64(0)}},
		{seccomp.Equal(3, 0xdeadbeef00000001), []uint64{0xdeadbeef00000001},
			[]uint64{1, 0xdeadbeef, 0xdeadbeef << 32, 0x00000001deadbeef, 0xdeadbeef00000003, 0xdeadbeee00000001}},
		{seccomp.Equal(5, 0), []uint64{0}, []uint64{1, 1 << 32, 1 << 63}},
		{seccomp.AllSet(0, 0x10000), []uint64{0x10000, 0x10001, 0x1ffff, ^uint64(0), 1<<32 | 0x10000},
			[]uint64{0, 0xffff, 0x10000 << 32, ^uint64(0x10000)}},
		{seccomp.AllSet(1, 3|1<<40), []uint64{3 | 1<<40, 7 | 3<<40, ^uint64(0)},
			[]uint64{0, 3, 1 << 40, 1 | 1<<40, 2 | 1<<40, 3 | 1<<41}},
		{seccomp.NoneSet(2, 4), []uint64{0, 3, 8, 4 << 32, 1<<32 | 3, ^uint64(4)},
			[]uint64{4, 5, 7, 1<<32 | 4, ^uint64(0)}},
		{seccomp.NoneSet(4, 1|1<<63), []uint64{0, 2, 1 << 62, ^uint64(0) >> 1 &^ 1},
			[]uint64{1, 1 << 63, ^uint64(0)}},
	} {
		t.Run(fmt.Sprintf("%+v", tt.cond), func(t *testing.T) {
			vm := mustVM(t, seccomp.Policy{Rules: []seccomp.Rule{{Nr: nr, Conds: []seccomp.Cond{tt.cond}}}, Default: eperm})
			for _, fill := range []uint64{0, ^uint64(0)} {
				var args [6]uint64
				for i := range args {
					args[i] = fill
				}
				try := func(v uint64) bool {
					args[tt.cond.Arg] = v
					return run(t, vm, seccomptest.Call(nr, args[:]...)) == seccomp.Allow
				}
				for _, v := range tt.allow {
					if !try(v) {
						t.Errorf("argument %d = %#x (others %#x): refused", tt.cond.Arg, v, fill)
					}
				}
				for _, v := range tt.disallow {
					if try(v) {
						t.Errorf("argument %d = %#x (others %#x): allowed", tt.cond.Arg, v, fill)
					}
				}
				for _, v := range values(tt.cond) {
					if want := v&tt.cond.Mask == tt.cond.Value; try(v) != want {
						t.Errorf("argument %d = %#x (others %#x): allowed %t, want %t", tt.cond.Arg, v, fill, !want, want)
					}
				}
			}
		})
	}
}

// values returns the edges, the condition's own value, mask and their
// neighbours, and each of them with single bits flipped.
func values(c seccomp.Cond) []uint64 {
	base := append([]uint64{c.Value, c.Mask, c.Value | ^c.Mask, c.Value + 1, c.Value - 1}, edges...)
	var vs []uint64
	for _, v := range base {
		vs = append(vs, v)
		for bit := 0; bit < 64; bit += 3 {
			vs = append(vs, v^1<<bit)
		}
	}
	return vs
}

// TestRules: rules for the same call are alternatives, all the conditions of
// one rule must hold, a call without a rule gets the default, and a rule
// without conditions allows any arguments.
func TestRules(t *testing.T) {
	const a, b, c = unix.SYS_FCNTL, unix.SYS_CLONE, unix.SYS_WRITE
	for _, def := range []seccomp.Action{seccomp.KillProcess, eperm} {
		vm := mustVM(t, seccomp.Policy{Default: def, Rules: []seccomp.Rule{
			{Nr: a, Conds: []seccomp.Cond{seccomp.Equal(1, 1)}},
			{Nr: a, Conds: []seccomp.Cond{seccomp.Equal(1, 2)}},
			{Nr: b, Conds: []seccomp.Cond{seccomp.AllSet(0, 0x10), seccomp.NoneSet(0, 0x20), seccomp.Equal(3, 9)}},
			{Nr: c},
		}})
		for _, tt := range []struct {
			d    seccomptest.Data
			want seccomp.Action
		}{
			{seccomptest.Call(a, 0, 1), seccomp.Allow},
			{seccomptest.Call(a, 0, 2), seccomp.Allow},
			{seccomptest.Call(a, 0, 3), def},
			{seccomptest.Call(a, 0, 1<<32|1), def},
			{seccomptest.Call(b, 0x10, 0, 0, 9), seccomp.Allow},
			{seccomptest.Call(b, 0x11, 0, 0, 9), seccomp.Allow},
			{seccomptest.Call(b, 0x30, 0, 0, 9), def},
			{seccomptest.Call(b, 0x10, 0, 0, 8), def},
			{seccomptest.Call(b, 0x20, 0, 0, 9), def},
			{seccomptest.Call(b, 0x10), def},
			{seccomptest.Call(c), seccomp.Allow},
			{seccomptest.Call(c, ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)), seccomp.Allow},
		} {
			if got := run(t, vm, tt.d); got != tt.want {
				t.Errorf("default %#x: %+v: %#x, want %#x", def, tt.d, got, tt.want)
			}
		}
		for nr := uintptr(0); nr < 1024; nr++ {
			if nr == a || nr == b || nr == c {
				continue
			}
			for _, v := range []uint64{0, 1, 2, 9, 0x10, ^uint64(0)} {
				if got := run(t, vm, seccomptest.Call(nr, v, v, v, v, v, v)); got != def {
					t.Fatalf("default %#x: call %d with arguments %#x: %#x", def, nr, v, got)
				}
			}
		}
	}
}

// TestABI: calls of another architecture kill the process whatever the
// default, and on amd64 x32 calls get the default even for an allowed number.
func TestABI(t *testing.T) {
	vm := mustVM(t, seccomp.Policy{Default: eperm, Rules: []seccomp.Rule{{Nr: unix.SYS_READ}, {Nr: unix.SYS_WRITE}}})
	if got := run(t, vm, seccomptest.Call(unix.SYS_READ)); got != seccomp.Allow {
		t.Fatalf("read: %#x, want allowed", got)
	}
	for _, arch := range []uint32{0, unix.AUDIT_ARCH_I386, unix.AUDIT_ARCH_X86_64, unix.AUDIT_ARCH_AARCH64,
		unix.AUDIT_ARCH_ARM, unix.AUDIT_ARCH_X86_64 ^ 1<<31, seccomp.Arch ^ 1, ^uint32(0)} {
		if arch == seccomp.Arch {
			continue
		}
		d := seccomptest.Call(unix.SYS_READ)
		d.Arch = arch
		if got := run(t, vm, d); got != seccomp.KillProcess {
			t.Errorf("read with arch %#x: %#x, want the process killed", arch, got)
		}
	}
	if runtime.GOARCH != "amd64" {
		return
	}
	for _, nr := range []uint32{unix.SYS_READ, unix.SYS_WRITE, 0} {
		d := seccomptest.Call(uintptr(nr))
		d.Nr |= 0x40000000
		if got := run(t, vm, d); got != eperm {
			t.Errorf("x32 call %#x: %#x, want the default", d.Nr, got)
		}
	}
}

// TestLayout: the program is the one the package comment shows.
func TestLayout(t *testing.T) {
	prog, err := seccomp.Policy{Default: seccomp.KillProcess, Rules: []seccomp.Rule{
		{Nr: unix.SYS_READ},
		{Nr: unix.SYS_MMAP, Conds: []seccomp.Cond{seccomp.NoneSet(2, unix.PROT_EXEC)}},
	}}.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	const (
		ld   = seccomp.LoadWord
		and  = seccomp.And
		jeq  = seccomp.JumpEq
		jset = seccomp.JumpSet
		ret  = seccomp.Return
	)
	want := []unix.SockFilter{
		{Code: ld, K: 4}, {Code: jeq, Jt: 1, K: seccomp.Arch}, {Code: ret, K: uint32(seccomp.KillProcess)},
	}
	if runtime.GOARCH == "amd64" {
		want = append(want, unix.SockFilter{Code: ld, K: 0}, unix.SockFilter{Code: jset, Jf: 1, K: 0x40000000},
			unix.SockFilter{Code: ret, K: uint32(seccomp.KillProcess)})
	}
	want = append(want, []unix.SockFilter{
		{Code: ld, K: 0}, {Code: jeq, Jf: 1, K: unix.SYS_READ}, {Code: ret, K: uint32(seccomp.Allow)},
		{Code: ld, K: 0}, {Code: jeq, Jf: 7, K: unix.SYS_MMAP},
		{Code: ld, K: 32}, {Code: and, K: unix.PROT_EXEC}, {Code: jeq, Jf: 4, K: 0},
		{Code: ld, K: 36}, {Code: and, K: 0}, {Code: jeq, Jf: 1, K: 0},
		{Code: ret, K: uint32(seccomp.Allow)},
		{Code: ret, K: uint32(seccomp.KillProcess)},
	}...)
	if fmt.Sprint(prog) != fmt.Sprint(want) {
		t.Errorf("program:\n%swant:\n%s", seccomptest.Dump(prog), seccomptest.Dump(want))
	}
}

func TestAssembleErrors(t *testing.T) {
	rule := func(nr uintptr, cs ...seccomp.Cond) []seccomp.Rule { return []seccomp.Rule{{Nr: nr, Conds: cs}} }
	many := make([]seccomp.Rule, unix.BPF_MAXINSNS/3)
	for i := range many {
		many[i] = seccomp.Rule{Nr: uintptr(i)}
	}
	for _, tt := range []struct {
		rules []seccomp.Rule
		def   seccomp.Action
		want  string
	}{
		{rule(1), 0, "default action 0x0"},
		{rule(1), seccomp.Allow, "default action 0x7fff0000"},
		{rule(1, seccomp.Equal(6, 0)), seccomp.KillProcess, "no argument 6"},
		{rule(1, seccomp.Equal(-1, 0)), seccomp.KillProcess, "no argument -1"},
		{rule(1, seccomp.Cond{Arg: 0, Mask: 1, Value: 2}), seccomp.KillProcess, "can never be 0x2"},
		{rule(1 << 31), seccomp.KillProcess, "out of range"},
		{many, seccomp.KillProcess, "more than the kernel's 4096"},
		{rule(1, make([]seccomp.Cond, 43)...), seccomp.KillProcess, "too many conditions"},
	} {
		p := seccomp.Policy{Rules: tt.rules, Default: tt.def}
		if _, err := p.Assemble(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%.80v: error %v, want %q", p, err, tt.want)
		}
	}
	for _, def := range []seccomp.Action{seccomp.KillProcess, seccomp.Errno(unix.EPERM), seccomp.Errno(unix.ENOSYS)} {
		if _, err := (seccomp.Policy{Rules: rule(1, make([]seccomp.Cond, 42)...), Default: def}).Assemble(); err != nil {
			t.Errorf("default %#x, 42 conditions: %v", def, err)
		}
	}
}
