package seccomp

import "golang.org/x/sys/unix"

// Arch is the AUDIT_ARCH_* value of the only ABI a filter lets through.
const Arch = unix.AUDIT_ARCH_AARCH64

// x32Bit is 0: arm64 has no second ABI under the same AUDIT_ARCH.
const x32Bit = 0
