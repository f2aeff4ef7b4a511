// Package errcode defines the named errors that instarfs reports to users.
//
// Every failure that reaches a user carries a stable upper-case code (for example
// QCOW2_ENCRYPTED or BACKING_PATH_OUTSIDE_ROOT) and a message that names the input
// that caused it. The worker and the host share these codes; docs/errors.md lists
// them with their meaning.
package errcode

import (
	"errors"
	"fmt"
)

// Error is a failure with a stable code.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// New returns an *Error with the given code and formatted message.
func New(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Code returns the code of the first *Error in err's chain, or INTERNAL when there
// is none.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// Codes. Append only: users match on these strings.
const (
	Internal = "INTERNAL"

	// Bad input on the command line or in a control file.
	BadArguments  = "BAD_ARGUMENTS"
	UnknownFormat = "UNKNOWN_FORMAT"

	// Files and the path policy.
	NotFound               = "NOT_FOUND"
	BackingNotFound        = "BACKING_NOT_FOUND"
	BackingPathOutsideRoot = "BACKING_PATH_OUTSIDE_ROOT"
	BackingProtocol        = "BACKING_PROTOCOL_REFUSED"
	BackingChainTooDeep    = "BACKING_CHAIN_TOO_DEEP"
	BackingChainLoop       = "BACKING_CHAIN_LOOP"
	BackingFormatRequired  = "BACKING_FORMAT_REQUIRED"
	RawNotInferred         = "RAW_NOT_INFERRED"
	ImageInUse             = "IMAGE_IN_USE"
	NotRegularFile         = "NOT_REGULAR_FILE"
	ImageChanged           = "IMAGE_CHANGED"
	NameTooLong            = "NAME_TOO_LONG"
	AmbiguousName          = "AMBIGUOUS_NAME"

	// Image formats.
	FormatNotDetected   = "FORMAT_NOT_DETECTED"
	FormatMismatch      = "FORMAT_MISMATCH"
	Qcow2BadHeader      = "QCOW2_BAD_HEADER"
	Qcow2Encrypted      = "QCOW2_ENCRYPTED"
	Qcow2ExternalData   = "QCOW2_EXTERNAL_DATA_FILE"
	Qcow2UnknownFeature = "QCOW2_UNKNOWN_FEATURE"
	Qcow2Corrupt        = "QCOW2_CORRUPT"
	Qcow2BadCompressed  = "QCOW2_BAD_COMPRESSED_CLUSTER"
	VmdkBadHeader       = "VMDK_BAD_HEADER"
	VmdkBadDescriptor   = "VMDK_BAD_DESCRIPTOR"
	VmdkExternalExtent  = "VMDK_EXTERNAL_EXTENT"
	VmdkUnsupported     = "VMDK_UNSUPPORTED"
	VmdkCorrupt         = "VMDK_CORRUPT"
	ImageTooLarge       = "IMAGE_TOO_LARGE"
	ReadFailed          = "READ_FAILED"

	// The sandbox.
	SandboxViolation   = "SANDBOX_VIOLATION"
	SandboxUnavailable = "SANDBOX_UNAVAILABLE"
	WorkerCrashed      = "WORKER_CRASHED"
	WorkerTimeout      = "WORKER_TIMEOUT"
	WorkerProtocol     = "WORKER_PROTOCOL"
	Cancelled          = "CANCELLED"

	// Writing images: commit and vmdk rebase.
	WriteFailed            = "WRITE_FAILED"
	NoBackingFile          = "NO_BACKING_FILE"
	BaseNotInChain         = "BASE_NOT_IN_CHAIN"
	CommitUnsupported      = "COMMIT_UNSUPPORTED"
	CheckUnsupported       = "CHECK_UNSUPPORTED"
	VmdkReadOnly           = "VMDK_READ_ONLY"
	VmdkDescriptorTooLarge = "VMDK_DESCRIPTOR_TOO_LARGE"
	VmdkFileTooLarge       = "VMDK_FILE_TOO_LARGE"
	VmdkParentNotVmdk      = "VMDK_PARENT_NOT_VMDK"
	RawBaseIsImage         = "RAW_BASE_IS_IMAGE"

	// qcow2 rebase and the qcow2 writer.
	BackingNameTooLong = "BACKING_NAME_TOO_LONG"
	BackingNameNoRoom  = "BACKING_NAME_NO_ROOM"
	RebaseUnsupported  = "REBASE_UNSUPPORTED"
	RebaseCreatesLoop  = "REBASE_CREATES_LOOP"
	Qcow2NoSpace       = "QCOW2_NO_SPACE"

	// check -r.
	RepairUnsupported  = "REPAIR_UNSUPPORTED"
	RepairNeedsRebuild = "REPAIR_NEEDS_REBUILD"

	// The mount's control files and job manager.
	ChainBusy   = "CHAIN_BUSY"
	MountFailed = "MOUNT_FAILED"

	// The mount's generated files.
	DocumentTooLarge = "DOCUMENT_TOO_LARGE"

	// The mount's disk view.
	ChainChanged = "CHAIN_CHANGED"
)
