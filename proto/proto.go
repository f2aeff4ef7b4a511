// Package proto is what crosses the sandbox boundary: the requests the host
// sends a worker, the lines and frames the worker answers with, and the
// documents inside them. Both sides import it; it imports nothing of either.
//
// The host treats everything a worker sends as hostile: these types are
// decoded strictly (unknown fields are an error) and within the bounds
// declared here.
package proto

import (
	"encoding/json"

	"instarfs/errcode"
)

// WorkerArg0 is the name of the worker's executable, installed next to
// instarfs, and argv[0] of every worker: a test binary that is its own
// worker tells by it that it must act as one.
const WorkerArg0 = "instarfs-worker"

// FirstImageFD is the descriptor number of Request.Images[0] in the worker; the
// others follow in order.
const FirstImageFD = 3

// Operations a worker performs.
const (
	OpNoop         = "noop"
	OpProbe        = "probe"
	OpMap          = "map"
	OpCheck        = "check"
	OpRebase       = "rebase"
	OpSandboxProbe = "sandbox-probe"
	// OpSandboxViolate makes a forbidden system call: the sandbox must kill
	// the worker (SANDBOX_VIOLATION). sandbox-check uses it.
	OpSandboxViolate = "sandbox-violate"
)

// OpCommit commits the layers above a base into it (qemu-img commit); its
// arguments are CommitArgs.
const OpCommit = "commit"

// OpRepair repairs an image's metadata (qemu-img check -r); its arguments
// are RepairArgs and its result a RepairResult.
const OpRepair = "repair"

// Request is what the host sends a worker on its standard input, as one JSON
// document.
type Request struct {
	Op     string          `json:"op"`
	Images []ImageRef      `json:"images"`
	Args   json.RawMessage `json:"args,omitempty"`
	// Shared is the size of the memory a session shares with its worker
	// (Job.Shared), passed as the descriptor after the images; 0 for none.
	Shared int `json:"shared,omitempty"`
	// Broker says the worker may ask the host for further images on the
	// broker socket (see BrokerRequest), at descriptor BrokerFD.
	Broker bool `json:"broker,omitempty"`
	// BrokerPort says the broker at BrokerFD is a microvm guest's port,
	// spoken in frames (PortQuestion, ...), and Drives are the files
	// attached for its answers: drive k (1 is the first) at BrokerFD()+k.
	BrokerPort bool       `json:"broker_port,omitempty"`
	Drives     []ImageRef `json:"drives,omitempty"`
	// HostCuts says the host applies a Cut line (Message.Cut): a worker
	// that shortens an image last may leave that to the host.
	HostCuts bool `json:"host_cuts,omitempty"`
	// Progress says the host shows the operation's progress: only then
	// does the worker send progress lines.
	Progress bool `json:"progress,omitempty"`
}

// BrokerFD is the worker's descriptor of the broker socket: the one after
// the images and the shared memory.
func (r Request) BrokerFD() int {
	return FirstImageFD + len(r.Images) + min(r.Shared, 1)
}

// ImageRef describes one image descriptor handed to the worker. Name is used in
// messages only; the worker never opens anything by name.
type ImageRef struct {
	Name     string `json:"name"`
	Format   string `json:"format,omitempty"` // empty: detect (never raw, unless DetectRaw)
	Writable bool   `json:"writable,omitempty"`
	// DetectRaw lets a detected format be raw when the file carries a
	// partition table (the image the user named without -f).
	DetectRaw bool `json:"detect_raw,omitempty"`
	// Size is the image file's length. Only the microvm backend sets it: its
	// guest sees the image as a block device of whole sectors.
	Size int64 `json:"size,omitempty"`
}

// Message is one line of the worker's standard output. A worker writes any number
// of progress and warning lines and exactly one final line carrying Result or
// Error. Each line sets exactly one field.
type Message struct {
	Progress *float64        `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *errcode.Error  `json:"error,omitempty"`
	// Warning is a diagnostic the host logs, for example a confinement layer
	// that this kernel does not offer.
	Warning string `json:"warning,omitempty"`
	Cut     *Cut   `json:"cut,omitempty"`
}

// Cut asks the host to shorten a writable image of the request to Length
// bytes and to make that durable, while the worker finishes and exits. A
// worker sends it only when Request.HostCuts is set, at most once, before
// its final line, and writes nothing to that image afterwards; the run ends
// once the cut is done. The host refuses a cut that would lengthen the image.
type Cut struct {
	Image  int   `json:"image"`
	Length int64 `json:"length"`
}

// MaxResultBytes bounds the worker's standard output as a whole.
const MaxResultBytes = 64 << 20

// Bounds on single lines of the worker's standard output. A result line may use
// all of MaxResultBytes.
const (
	MaxProgressLineBytes = 4 << 10  // progress and warning lines
	MaxErrorLineBytes    = 64 << 10 // the final error line
	MaxWarnings          = 64       // warning lines per run
)
