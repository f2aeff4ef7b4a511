// Package seccomp assembles and installs a seccomp allow-list: a classic BPF
// program that the kernel runs on every system call of the process.
//
// A Policy is a list of rules, each allowing one system call number when all
// of its argument conditions hold, and a default action for every call no
// rule allows. Assemble translates it into a straight list of checks, without
// name tables and without backward or shared jumps, so that each part can be
// read on its own:
//
//	ld  [arch]                    the architecture check
//	jeq #AUDIT_ARCH_<this>, 1, 0
//	ret #KILL_PROCESS             any other ABI kills the process
//	ld  [nr]                      amd64 only: the x32 ABI
//	jset #__X32_SYSCALL_BIT, 0, 1
//	ret #default
//
//	ld  [nr]                      one block per rule
//	jeq #nr, 0, <past the block>
//	ld  [args[i] low word]        per condition: (arg & mask) == value,
//	and #mask low word            compared on both 32-bit halves
//	jeq #value low word, 0, <past the block>
//	ld  [args[i] high word]
//	and #mask high word
//	jeq #value high word, 0, <past the block>
//	ret #ALLOW
//	...
//	ret #default                  no rule allowed the call
//
// Each block loads what it tests, and every failed test jumps to the first
// instruction after its block, so rules for the same number are alternatives.
// A block whose call number does not match reads no argument, which lets the
// kernel's seccomp cache (Linux 5.11+) allow unconditional calls without
// running the filter.
//
// The program reads struct seccomp_data: int nr at offset 0, __u32 arch at 4,
// __u64 instruction_pointer at 8 and __u64 args[6] from 16, in the CPU's byte
// order. Classic BPF loads 32-bit words, also in the CPU's order, so on the
// little-endian architectures this package supports the low word of args[i]
// is at 16+8i and the high word at 16+8i+4.
package seccomp

import (
	"fmt"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Action is what the kernel does with a system call: a seccomp return value.
type Action uint32

// KillProcess kills the whole process with SIGSYS.
const KillProcess Action = unix.SECCOMP_RET_KILL_PROCESS

// Allow lets the system call run.
const Allow Action = unix.SECCOMP_RET_ALLOW

// Errno fails the system call with e without running it.
func Errno(e syscall.Errno) Action {
	return Action(unix.SECCOMP_RET_ERRNO | uint32(e)&unix.SECCOMP_RET_DATA)
}

// Cond is a condition on one argument of a system call, compared on all of
// its 64 bits: args[Arg] & Mask == Value.
type Cond struct {
	Arg   int // 0 to 5
	Mask  uint64
	Value uint64
}

// Equal is the condition that argument arg is v.
func Equal(arg int, v uint64) Cond { return Cond{Arg: arg, Mask: ^uint64(0), Value: v} }

// AllSet is the condition that argument arg has every bit of bits set.
func AllSet(arg int, bits uint64) Cond { return Cond{Arg: arg, Mask: bits, Value: bits} }

// NoneSet is the condition that argument arg has no bit of bits set.
func NoneSet(arg int, bits uint64) Cond { return Cond{Arg: arg, Mask: bits, Value: 0} }

// Rule allows system call Nr when all of Conds hold (always, when there are
// none).
type Rule struct {
	Nr    uintptr // a unix.SYS_* constant of this architecture
	Conds []Cond
}

// Policy is an allow-list: the calls its Rules allow run, any other call gets
// Default, which must be KillProcess or an Errno action. A call made with another architecture's ABI (including x32 on
// amd64) never runs: it kills the process, or gets Default for x32.
type Policy struct {
	Rules   []Rule
	Default Action
}

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// The BPF instructions a program of this package is made of, and nothing else.
const (
	LoadWord = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS   // A = the 32-bit word of seccomp_data at K
	And      = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K  // A &= K
	JumpEq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K  // jump Jt if A == K, else Jf
	JumpSet  = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K // jump Jt if A & K != 0, else Jf
	Return   = unix.BPF_RET | unix.BPF_K                 // return the action K
)

const maxArgs = 6

func stmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }

func jump(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
}

// Assemble translates p into a BPF program, laid out as the package comment
// shows.
func (p Policy) Assemble() ([]unix.SockFilter, error) {
	if Arch == 0 {
		return nil, fmt.Errorf("seccomp: no filter for architecture %s", runtime.GOARCH)
	}
	if p.Default != KillProcess && p.Default&^unix.SECCOMP_RET_DATA != unix.SECCOMP_RET_ERRNO {
		return nil, fmt.Errorf("seccomp: default action %#x is neither KillProcess nor an errno", uint32(p.Default))
	}
	prog := []unix.SockFilter{
		stmt(LoadWord, offArch),
		jump(JumpEq, Arch, 1, 0),
		stmt(Return, uint32(KillProcess)),
	}
	if x32Bit != 0 {
		prog = append(prog,
			stmt(LoadWord, offNr),
			jump(JumpSet, x32Bit, 0, 1),
			stmt(Return, uint32(p.Default)))
	}
	for _, r := range p.Rules {
		b, err := r.block()
		if err != nil {
			return nil, err
		}
		prog = append(prog, b...)
	}
	prog = append(prog, stmt(Return, uint32(p.Default)))
	if len(prog) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("seccomp: the program has %d instructions, more than the kernel's %d", len(prog), unix.BPF_MAXINSNS)
	}
	return prog, nil
}

// block returns the instructions of one rule. Every test that fails jumps to
// the instruction after the block.
func (r Rule) block() ([]unix.SockFilter, error) {
	if uint64(r.Nr) >= 1<<31 {
		return nil, fmt.Errorf("seccomp: system call number %d out of range", r.Nr)
	}
	b := []unix.SockFilter{
		stmt(LoadWord, offNr),
		jump(JumpEq, uint32(r.Nr), 0, 0), // the false branch is set below
	}
	for _, c := range r.Conds {
		if c.Arg < 0 || c.Arg >= maxArgs {
			return nil, fmt.Errorf("seccomp: system call %d: no argument %d", r.Nr, c.Arg)
		}
		if c.Value&^c.Mask != 0 {
			return nil, fmt.Errorf("seccomp: system call %d: argument %d can never be %#x under mask %#x", r.Nr, c.Arg, c.Value, c.Mask)
		}
		lo := uint32(offArgs + 8*c.Arg) // little-endian: the low word first
		b = append(b,
			stmt(LoadWord, lo),
			stmt(And, uint32(c.Mask)),
			jump(JumpEq, uint32(c.Value), 0, 0),
			stmt(LoadWord, lo+4),
			stmt(And, uint32(c.Mask>>32)),
			jump(JumpEq, uint32(c.Value>>32), 0, 0))
	}
	b = append(b, stmt(Return, uint32(Allow)))
	// Point the false branch of every comparison past the block.
	for i := range b {
		if b[i].Code != JumpEq {
			continue
		}
		skip := len(b) - i - 1
		if skip > 255 {
			return nil, fmt.Errorf("seccomp: system call %d has too many conditions", r.Nr)
		}
		b[i].Jf = uint8(skip)
	}
	return b, nil
}

// Load installs prog as a seccomp filter on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC), after setting no_new_privs on the calling
// thread, which the kernel then sets on every thread it synchronizes. A
// filter cannot be removed.
func Load(prog []unix.SockFilter) error {
	if len(prog) == 0 || len(prog) > unix.BPF_MAXINSNS {
		return fmt.Errorf("seccomp: a program of %d instructions", len(prog))
	}
	// no_new_privs and the filter must be set on the same thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	tid, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return fmt.Errorf("seccomp(SECCOMP_SET_MODE_FILTER): %w", errno)
	}
	// With TSYNC, a positive result is a thread that could not take the
	// filter; then no thread has it.
	if tid != 0 {
		return fmt.Errorf("seccomp(SECCOMP_SET_MODE_FILTER): thread %d could not be synchronized", tid)
	}
	return nil
}

// Supported reports whether the kernel runs seccomp filters that can kill
// the process (Linux 4.14+).
func Supported() bool {
	action := uint32(KillProcess)
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_ACTION_AVAIL, 0, uintptr(unsafe.Pointer(&action)))
	return errno == 0
}
