//go:build !amd64 && !arm64

package seccomp

// Arch is 0, and Assemble fails: the architectures this package supports
// are little-endian, and the worker's allow-list names amd64 and arm64 calls.
const Arch = 0

const x32Bit = 0
