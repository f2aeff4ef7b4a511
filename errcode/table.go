package errcode

import "syscall"

// Codes. Append only: users match on these strings. Each has its row in table.
const (
	Internal Code = "INTERNAL"

	// Bad input on the command line or in a control file.
	BadArguments  Code = "BAD_ARGUMENTS"
	UnknownFormat Code = "UNKNOWN_FORMAT"

	// Files and the path policy.
	NotFound               Code = "NOT_FOUND"
	BackingNotFound        Code = "BACKING_NOT_FOUND"
	BackingPathOutsideRoot Code = "BACKING_PATH_OUTSIDE_ROOT"
	BackingProtocol        Code = "BACKING_PROTOCOL_REFUSED"
	BackingChainTooDeep    Code = "BACKING_CHAIN_TOO_DEEP"
	BackingChainLoop       Code = "BACKING_CHAIN_LOOP"
	BackingFormatRequired  Code = "BACKING_FORMAT_REQUIRED"
	RawNotInferred         Code = "RAW_NOT_INFERRED"
	ImageInUse             Code = "IMAGE_IN_USE"
	NotRegularFile         Code = "NOT_REGULAR_FILE"
	ImageChanged           Code = "IMAGE_CHANGED"
	NameTooLong            Code = "NAME_TOO_LONG"
	AmbiguousName          Code = "AMBIGUOUS_NAME"

	// Image formats.
	FormatNotDetected   Code = "FORMAT_NOT_DETECTED"
	FormatMismatch      Code = "FORMAT_MISMATCH"
	Qcow2BadHeader      Code = "QCOW2_BAD_HEADER"
	Qcow2Encrypted      Code = "QCOW2_ENCRYPTED"
	Qcow2ExternalData   Code = "QCOW2_EXTERNAL_DATA_FILE"
	Qcow2UnknownFeature Code = "QCOW2_UNKNOWN_FEATURE"
	Qcow2Corrupt        Code = "QCOW2_CORRUPT"
	Qcow2BadCompressed  Code = "QCOW2_BAD_COMPRESSED_CLUSTER"
	VmdkBadHeader       Code = "VMDK_BAD_HEADER"
	VmdkBadDescriptor   Code = "VMDK_BAD_DESCRIPTOR"
	VmdkExternalExtent  Code = "VMDK_EXTERNAL_EXTENT"
	VmdkUnsupported     Code = "VMDK_UNSUPPORTED"
	VmdkCorrupt         Code = "VMDK_CORRUPT"
	ImageTooLarge       Code = "IMAGE_TOO_LARGE"
	ReadFailed          Code = "READ_FAILED"

	// The sandbox.
	SandboxViolation   Code = "SANDBOX_VIOLATION"
	SandboxUnavailable Code = "SANDBOX_UNAVAILABLE"
	WorkerCrashed      Code = "WORKER_CRASHED"
	WorkerTimeout      Code = "WORKER_TIMEOUT"
	WorkerProtocol     Code = "WORKER_PROTOCOL"
	Cancelled          Code = "CANCELLED"

	// Writing images: commit and vmdk rebase.
	WriteFailed            Code = "WRITE_FAILED"
	NoBackingFile          Code = "NO_BACKING_FILE"
	BaseNotInChain         Code = "BASE_NOT_IN_CHAIN"
	CommitUnsupported      Code = "COMMIT_UNSUPPORTED"
	CheckUnsupported       Code = "CHECK_UNSUPPORTED"
	VmdkReadOnly           Code = "VMDK_READ_ONLY"
	VmdkDescriptorTooLarge Code = "VMDK_DESCRIPTOR_TOO_LARGE"
	VmdkFileTooLarge       Code = "VMDK_FILE_TOO_LARGE"
	VmdkParentNotVmdk      Code = "VMDK_PARENT_NOT_VMDK"
	RawBaseIsImage         Code = "RAW_BASE_IS_IMAGE"

	// qcow2 rebase and the qcow2 writer.
	BackingNameTooLong Code = "BACKING_NAME_TOO_LONG"
	BackingNameNoRoom  Code = "BACKING_NAME_NO_ROOM"
	RebaseUnsupported  Code = "REBASE_UNSUPPORTED"
	RebaseCreatesLoop  Code = "REBASE_CREATES_LOOP"
	Qcow2NoSpace       Code = "QCOW2_NO_SPACE"

	// check -r.
	RepairUnsupported  Code = "REPAIR_UNSUPPORTED"
	RepairNeedsRebuild Code = "REPAIR_NEEDS_REBUILD"

	// The mount's control files and job manager.
	ChainBusy   Code = "CHAIN_BUSY"
	MountFailed Code = "MOUNT_FAILED"

	// The mount's generated files.
	DocumentTooLarge Code = "DOCUMENT_TOO_LARGE"

	// The mount's disk view.
	ChainChanged Code = "CHAIN_CHANGED"
)

// A row says, for one code: the errno a request on the mount (a control file's
// write, the open of a generated file or of disk, a read of disk) returns for
// it; its roles; and one line saying what it means.
type row struct {
	errno syscall.Errno
	roles int
	what  string
}

// Roles of a code.
const (
	// host: only the host reports it (the path policy, locks, the mount, how
	// a worker ended, what the host checks before any worker runs); from a
	// worker it is a protocol violation.
	host = 0
	// worker: the worker may send it.
	worker = 1 << iota
	// transient: a failure of the worker or of the machine rather than an
	// answer about the input; asking again may succeed.
	transient
	// badImage: the file is an image of a format instarfs knows, which
	// instarfs refuses as it is.
	badImage
)

// table is the one place each code is described. A code with errno EIO is
// listed in docs/mount.md's errno table under "every other code".
var table = map[Code]row{
	Internal: {syscall.EIO, worker | transient, "a bug in instarfs"},

	BadArguments:  {syscall.EINVAL, worker, "the command line or control-file arguments are invalid"},
	UnknownFormat: {syscall.EINVAL, worker, "a format name that instarfs does not support"},

	NotFound:               {syscall.ENOENT, host, "the image named on the command line cannot be opened"},
	BackingNotFound:        {syscall.ENOENT, worker, "a backing file named by an image does not exist"},
	BackingPathOutsideRoot: {syscall.EPERM, host, "a backing file lies outside every allowed directory; it was not opened"},
	BackingProtocol:        {syscall.EPERM, host, "a backing name is a json: specification or a protocol; it was not opened"},
	BackingChainTooDeep:    {syscall.EIO, host, "the chain has more than 16 backing files"},
	BackingChainLoop:       {syscall.EIO, host, "an image appears twice in its own backing chain"},
	BackingFormatRequired:  {syscall.EINVAL, worker, "a backing format is needed and cannot be determined"},
	RawNotInferred:         {syscall.EINVAL, host, "a backing file is neither qcow2 nor vmdk, and no backing format names it raw"},
	ImageInUse:             {syscall.EBUSY, host, "another process holds the image's lock"},
	NotRegularFile:         {syscall.EPERM, host, "the image or a backing file is not a regular file"},
	ImageChanged:           {syscall.EBUSY, host, "a name of the mount now leads to another file than the one it showed"},
	NameTooLong:            {syscall.ENAMETOOLONG, host, "a name has a component longer than 255 bytes"},
	AmbiguousName:          {syscall.EINVAL, host, "a ../ name means one file in the mount and another on the host"},

	FormatNotDetected:   {syscall.EINVAL, worker, "the file is not qcow2 or vmdk and carries no partition table"},
	FormatMismatch:      {syscall.EINVAL, worker, "the file's contents do not match the format it was named with"},
	Qcow2BadHeader:      {syscall.EIO, worker | badImage, "the qcow2 header is invalid"},
	Qcow2Encrypted:      {syscall.EIO, worker | badImage, "the image is encrypted"},
	Qcow2ExternalData:   {syscall.EIO, worker | badImage, "the image keeps its data in an external file"},
	Qcow2UnknownFeature: {syscall.EIO, worker | badImage, "the image uses an incompatible feature instarfs does not know"},
	Qcow2Corrupt:        {syscall.EIO, worker | badImage, "qcow2 metadata points outside the file or at impossible places"},
	Qcow2BadCompressed:  {syscall.EIO, worker | badImage, "a compressed cluster cannot be decompressed to exactly a cluster"},
	VmdkBadHeader:       {syscall.EIO, worker | badImage, "the vmdk sparse header is invalid"},
	VmdkBadDescriptor:   {syscall.EIO, worker | badImage, "the vmdk descriptor cannot be parsed"},
	VmdkExternalExtent:  {syscall.EIO, worker | badImage, "the vmdk descriptor names extent files"},
	VmdkUnsupported:     {syscall.EIO, worker | badImage, "a vmdk variant instarfs does not handle"},
	VmdkCorrupt:         {syscall.EIO, worker | badImage, "vmdk grain directory or tables point outside the file"},
	ImageTooLarge:       {syscall.EFBIG, worker | badImage, "sizes beyond what instarfs accepts"},
	ReadFailed:          {syscall.EIO, worker, "reading an image failed"},

	SandboxViolation:   {syscall.EIO, host, "the worker tried a system call its sandbox forbids and was killed"},
	SandboxUnavailable: {syscall.EIO, worker | transient, "the sandbox cannot run, or the worker could not confine itself"},
	WorkerCrashed:      {syscall.EIO, host | transient, "the worker died before giving a result"},
	WorkerTimeout:      {syscall.EIO, host | transient, "the worker ran past its time limit and was killed"},
	WorkerProtocol:     {syscall.EIO, worker | transient, "the worker's answer, or the request it got, was malformed"},
	Cancelled:          {syscall.EINTR, worker, "the operation was interrupted"},

	WriteFailed:            {syscall.EIO, worker, "writing an image failed"},
	NoBackingFile:          {syscall.EINVAL, host, "commit of an image that has no backing file"},
	BaseNotInChain:         {syscall.EINVAL, host, "commit -b names an image that is not in the chain"},
	CommitUnsupported:      {syscall.EOPNOTSUPP, worker, "the commit asked for cannot be done on these images"},
	CheckUnsupported:       {syscall.EIO, host, "check of a format without checks"},
	VmdkReadOnly:           {syscall.EIO, worker | badImage, "the vmdk variant can be read but not written"},
	VmdkDescriptorTooLarge: {syscall.EIO, worker | badImage, "a rewritten vmdk descriptor would not fit in its area"},
	VmdkFileTooLarge:       {syscall.EIO, worker | badImage, "the vmdk file would grow past what its grain tables address"},
	VmdkParentNotVmdk:      {syscall.EIO, worker | badImage, "a vmdk image can only have a vmdk parent"},
	RawBaseIsImage:         {syscall.EPERM, worker, "commit would write into a raw base that starts with image magic"},

	BackingNameTooLong: {syscall.EINVAL, worker, "a new backing name is longer than 1023 bytes"},
	BackingNameNoRoom:  {syscall.EIO, worker, "the new backing name does not fit in the image's header cluster"},
	RebaseUnsupported:  {syscall.EOPNOTSUPP, worker, "the rebase asked for cannot be done on this image"},
	RebaseCreatesLoop:  {syscall.EINVAL, host, "rebase onto the image itself or one of its overlays"},
	Qcow2NoSpace:       {syscall.EIO, worker | badImage, "the qcow2 image would grow past what its refcounts address"},

	RepairUnsupported:  {syscall.EOPNOTSUPP, worker, "check -r refuses a repair it does not do as qemu-img does"},
	RepairNeedsRebuild: {syscall.EIO, host, "check -r leaks found what only check -r all repairs"},

	ChainBusy:   {syscall.EBUSY, host, "another job runs on an image of the same chain"},
	MountFailed: {syscall.EIO, host, "instarfs mount could not mount"},

	DocumentTooLarge: {syscall.EFBIG, worker, "a JSON file of the mount would be larger than --max-document-size"},

	ChainChanged: {syscall.EIO, host, "a job changed the chain of an open disk file, or a microvm's second guest asked for a file the first did not"},
}

// Errno is the errno the mount returns for c: EIO for a code not in the table.
func (c Code) Errno() syscall.Errno {
	if r, ok := table[c]; ok {
		return r.errno
	}
	return syscall.EIO
}

// Transient reports whether c is a failure of the worker or of the machine
// rather than an answer about the input, so that asking again may succeed.
func (c Code) Transient() bool { return table[c].roles&transient != 0 }

// FromWorker reports whether a worker may send c.
func (c Code) FromWorker() bool { return table[c].roles&worker != 0 }

// BadImage reports whether c says that the file is an image of a known format
// that instarfs refuses as it is.
func (c Code) BadImage() bool { return table[c].roles&badImage != 0 }
