// Package seccomptest runs seccomp programs outside the kernel, for tests:
// in golang.org/x/net/bpf's interpreter, on a struct seccomp_data laid out as
// a little-endian CPU holds it.
package seccomptest

import (
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"instarfs/vmm/jail/internal/seccomp"
)

// Data is a struct seccomp_data.
type Data struct {
	Nr   uint32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

// Call returns the seccomp_data of system call nr with args, made through
// this architecture's ABI.
func Call(nr uintptr, args ...uint64) Data {
	d := Data{Nr: uint32(nr), Arch: seccomp.Arch}
	copy(d.Args[:], args)
	return d
}

// VM runs a seccomp program.
type VM struct{ vm *bpf.VM }

// NewVM checks prog against the kernel's rules for seccomp programs that
// matter here and prepares it to run.
func NewVM(prog []unix.SockFilter) (*VM, error) {
	if err := check(prog); err != nil {
		return nil, fmt.Errorf("%v in\n%s", err, Dump(prog))
	}
	insns := make([]bpf.Instruction, len(prog))
	for i, in := range prog {
		insns[i] = raw(in).Disassemble()
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		return nil, err
	}
	return &VM{vm}, nil
}

// Run returns the program's action for d.
func (v *VM) Run(d Data) (seccomp.Action, error) {
	// The struct as a little-endian CPU holds it.
	le := make([]byte, 64)
	binary.LittleEndian.PutUint32(le[0:], d.Nr)
	binary.LittleEndian.PutUint32(le[4:], d.Arch)
	binary.LittleEndian.PutUint64(le[8:], d.IP)
	for i, a := range d.Args {
		binary.LittleEndian.PutUint64(le[16+8*i:], a)
	}
	// The kernel loads each word in the CPU's byte order, the interpreter in
	// network order: reverse the bytes of every word (check allows aligned
	// word loads only).
	packet := make([]byte, len(le))
	for w := 0; w < len(le); w += 4 {
		binary.BigEndian.PutUint32(packet[w:], binary.LittleEndian.Uint32(le[w:]))
	}
	r, err := v.vm.Run(packet)
	return seccomp.Action(uint32(r)), err
}

// check applies the kernel's rules: loads of aligned words inside
// seccomp_data, jumps that land inside the program, a return at the end; and
// allows only the instructions package seccomp emits, and returns of its
// actions.
func check(prog []unix.SockFilter) error {
	if len(prog) == 0 || len(prog) > unix.BPF_MAXINSNS {
		return fmt.Errorf("%d instructions", len(prog))
	}
	for i, in := range prog {
		switch in.Code {
		case seccomp.LoadWord:
			if in.K%4 != 0 || in.K >= 64 {
				return fmt.Errorf("instruction %d loads offset %d", i, in.K)
			}
		case seccomp.And:
		case seccomp.JumpEq, seccomp.JumpSet:
			if i+1+int(max(in.Jt, in.Jf)) >= len(prog) {
				return fmt.Errorf("instruction %d jumps out of the program", i)
			}
		case seccomp.Return:
			a := seccomp.Action(in.K)
			if a != seccomp.Allow && a != seccomp.KillProcess && in.K&^unix.SECCOMP_RET_DATA != unix.SECCOMP_RET_ERRNO {
				return fmt.Errorf("instruction %d returns %#x", i, in.K)
			}
		default:
			return fmt.Errorf("instruction %d has code %#x", i, in.Code)
		}
	}
	if prog[len(prog)-1].Code != seccomp.Return {
		return fmt.Errorf("the program does not end with a return")
	}
	return nil
}

func raw(in unix.SockFilter) bpf.RawInstruction {
	return bpf.RawInstruction{Op: in.Code, Jt: in.Jt, Jf: in.Jf, K: in.K}
}

// Dump lists prog one instruction a line.
func Dump(prog []unix.SockFilter) string {
	var b strings.Builder
	for i, in := range prog {
		fmt.Fprintf(&b, "%3d: %v\n", i, raw(in).Disassemble())
	}
	return b.String()
}
