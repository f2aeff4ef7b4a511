package proto

import "instarfs/errcode"

// The broker: a worker that runs an operation on a chain is handed only the
// image the user named. When it needs a backing file it asks the host by
// name, on a socket the host created before the worker started (a
// SOCK_SEQPACKET socketpair, the descriptor after the images and the shared
// memory). The host applies its path policy and answers with the opened
// file's descriptor (SCM_RIGHTS) or with a named refusal. Whether a file is
// opened read-only or read-write is the host's decision for the operation,
// never the worker's.
//
// Each question and each answer is one datagram of JSON, at most
// MaxBrokerBytes. A worker asks at most MaxBrokerRequests questions.

// Limits of the broker socket.
const (
	MaxBrokerBytes    = 64 << 10
	MaxBrokerRequests = 64
)

// What a BrokerRequest asks the host to open.
const (
	// OpenBacking opens the backing file of the member the request is
	// about: its Info.BackingFilename, as Info.BackingFilenameFormat.
	OpenBacking = "backing"
	// OpenNewBacking opens the new backing file of a rebase (the name in
	// RebaseArgs.Backing, resolved against the top's directory).
	OpenNewBacking = "new-backing"
)

// BrokerRequest is one question of a worker. It reports what the worker read
// in chain member Image (0 is the top; members get their index from the
// answer that opened them): the first question about a member carries its
// Info, exactly once, without its snapshots (an operation whose result shows
// them, OpProbe and OpSurvey, returns every member's whole Info in it). Open, when set, asks for a file: OpenBacking or
// OpenNewBacking. A request without Open only reports.
type BrokerRequest struct {
	Image int    `json:"image"`
	Info  *Info  `json:"info,omitempty"`
	Open  string `json:"open,omitempty"`
}

// BrokerReply answers a BrokerRequest. Exactly one of these holds:
//
//   - Error is set: the host refused, and the worker reports that error as
//     the operation's (or, where the operation allows, goes on without).
//   - A descriptor came with the reply: the file is the new member Image,
//     named Name, to be read as Format ("" to detect; never raw), writable
//     when Writable.
//   - Same is set: the file is member Image, already open (the new backing
//     file of a rebase that is part of the old chain).
//   - Nothing was asked to be opened: the reply only acknowledges.
//
// Reopened lists members whose descriptors follow the opened one (if any),
// read-write, to replace the read-only ones the worker holds: the host sends
// them once the chain is complete (a commit's base, and the image above it).
type BrokerReply struct {
	Image    int            `json:"image,omitempty"`
	Name     string         `json:"name,omitempty"`
	Format   string         `json:"format,omitempty"`
	Writable bool           `json:"writable,omitempty"`
	Same     bool           `json:"same,omitempty"`
	Reopened []int          `json:"reopened,omitempty"`
	Error    *errcode.Error `json:"error,omitempty"`
	// To a microvm guest (Request.BrokerPort), the opened file is not a
	// descriptor: it is drive Drive of Request.Drives (1 is the first), or,
	// with Remote, a file the worker reads through the port. Size is the
	// file's length (a drive is a block device of whole sectors).
	Drive  int   `json:"drive,omitempty"`
	Remote bool  `json:"remote,omitempty"`
	Size   int64 `json:"size,omitempty"`
}

// A microvm guest cannot receive a descriptor after it booted: its broker is
// a virtio-serial port (Request.BrokerPort), a byte stream, on which each
// message is a frame: a kind byte, a big-endian uint32 length, and the body.
// The worker sends PortQuestion (a BrokerRequest), PortRead (a PortReadArgs)
// and PortDrives; the host answers a question with PortAnswer (a
// BrokerReply) and a read with PortData (the bytes) or PortRefused (an
// errcode.Error). A file the host opened comes as a drive attached when the
// guest booted (BrokerReply.Drive) or, when it is not attached, as a member
// the worker reads through the port (BrokerReply.Remote), at most
// MaxPortRead bytes a read. PortDrives says the worker needs every member
// attached for its operation: the host stops the guest and boots another
// with every file it opened attached, and answers that guest's questions,
// which must be the first guest's, by drive.
const (
	PortQuestion = 'Q'
	PortRead     = 'R'
	PortDrives   = 'B'
	PortAnswer   = 'A'
	PortData     = 'D'
	PortRefused  = 'E'
)

// Limits of the port: the bytes of one read, and of all reads of a run.
const (
	MaxPortRead      = 1 << 20
	MaxPortReadTotal = 1 << 30
)

// PortReadArgs asks for Length bytes at Offset of member Image, a member the
// host answered with BrokerReply.Remote. The answer is shorter only at the
// end of the file.
type PortReadArgs struct {
	Image  int   `json:"image"`
	Offset int64 `json:"offset"`
	Length int   `json:"length"`
}
