package seccomp

import "golang.org/x/sys/unix"

// Arch is the AUDIT_ARCH_* value of the only ABI a filter lets through.
const Arch = unix.AUDIT_ARCH_X86_64

// x32Bit is __X32_SYSCALL_BIT: the x32 ABI shares AUDIT_ARCH_X86_64, and its
// system call numbers are those with this bit set.
const x32Bit = 0x40000000
