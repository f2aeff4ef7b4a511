// Package guestabi is what the microvm backend and its guest's /init agree
// on: the paths inside the initramfs, the port of a session, the console's
// markers and the layout of the result drive. Both sides import it, and it
// imports neither, so the host executable does not contain the guest (which
// runs the worker) to know these names.
package guestabi

// Paths inside the initramfs.
const (
	ModulesOrder = "/modules.order"         // module file names, in load order
	ModulesDir   = "/lib/modules"           // the module files
	RequestPath  = "/instarfs/request.json" // the proto.Request, appended per run
)

// SessionPort names the virtio-serial port of a session's guest, which has no
// RequestPath: the request line and then the session's frames come over it,
// and the worker's lines and frames go back over it.
const SessionPort = "instarfs"

// ResultMagic starts the result drive: magic, a little-endian uint32 length,
// the worker's protocol lines, then a uint32 count and that many int64
// lengths: for each image, the length the worker left a writable image at
// (worker.DeviceLengths), or -1.
const ResultMagic = "INSR"

// ResultOverflow in place of the length says that the worker wrote more
// than proto.MaxResultBytes, which the host refuses: no lines follow, only
// the lengths. (Copying the lines out through an emulated guest would take
// longer than the run.)
const ResultOverflow = 0xffffffff

// ConsolePrefix marks the guest's own lines on the console, where the kernel
// may write too. The line after the prefix is a protocol line, or Ready.
const ConsolePrefix = "\x02instarfs: "

// Console lines (after ConsolePrefix) that say /init runs, and that it has
// written the result drive and is about to stop the machine.
const (
	Ready = "ready"
	Done  = "done"
)
