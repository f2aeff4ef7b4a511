package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"instarfs/errcode"
)

// ProbeArgs are the arguments of OpProbe.
type ProbeArgs struct {
	// DetectRaw lets the worker report raw for a file that carries a partition
	// table; otherwise a file that is neither qcow2 nor vmdk is refused.
	DetectRaw bool `json:"detect_raw,omitempty"`
	// Chain, with a broker, describes the image's whole backing chain to
	// the host, asking for each backing file in turn.
	Chain bool `json:"chain,omitempty"`
}

// ChainInfo is the result of OpProbe with a broker: every member the worker
// described, top first, with its snapshots, and when the chain could not be
// opened whole, the error that stopped it below the last of them.
type ChainInfo struct {
	Images []Info         `json:"images"`
	Error  *errcode.Error `json:"error,omitempty"`
}

// MapArgs are the arguments of OpMap.
type MapArgs struct {
	// MaxBytes, when positive, bounds the JSON of the rows below what a worker
	// may answer: a larger map fails with DOCUMENT_TOO_LARGE as soon as it is
	// known, before it is made whole.
	MaxBytes int64 `json:"max_bytes,omitempty"`
}

// Info is what a worker reports about one image: the fields of `qemu-img info
// --output=json` that come from the image's bytes. The host adds the file-system
// fields (filename, full-backing-filename, actual-size).
type Info struct {
	Format                string          `json:"format"`
	VirtualSize           int64           `json:"virtual-size"`
	ClusterSize           int64           `json:"cluster-size,omitempty"`
	BackingFilename       string          `json:"backing-filename,omitempty"`
	BackingFilenameFormat string          `json:"backing-filename-format,omitempty"`
	DirtyFlag             bool            `json:"dirty-flag"`
	FormatSpecific        *FormatSpecific `json:"format-specific,omitempty"`
	Snapshots             []Snapshot      `json:"snapshots,omitempty"`
}

// FormatSpecific is qemu-img's "format-specific" object: Type is "qcow2" or
// "vmdk", and Data holds the matching fields.
type FormatSpecific struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// Qcow2Specific is the "data" of a qcow2 image's format-specific object.
type Qcow2Specific struct {
	Compat          string `json:"compat"`
	CompressionType string `json:"compression-type"`
	LazyRefcounts   *bool  `json:"lazy-refcounts,omitempty"`
	RefcountBits    int    `json:"refcount-bits"`
	Corrupt         *bool  `json:"corrupt,omitempty"`
	ExtendedL2      *bool  `json:"extended-l2,omitempty"`
}

// VmdkSpecific is the "data" of a vmdk image's format-specific object.
type VmdkSpecific struct {
	CID        uint32       `json:"cid"`
	ParentCID  uint32       `json:"parent-cid"`
	CreateType string       `json:"create-type"`
	Extents    []VmdkExtent `json:"extents"`
}

// VmdkExtent is one extent of a vmdk image as qemu-img info reports it, its
// fields in qemu-img's key order (the order of its QDict's hash buckets).
type VmdkExtent struct {
	Compressed  bool   `json:"compressed,omitempty"`
	VirtualSize int64  `json:"virtual-size"`
	Filename    string `json:"filename,omitempty"`
	ClusterSize int64  `json:"cluster-size"`
	Format      string `json:"format"`
}

// Snapshot is one internal snapshot, as in qemu-img info.
type Snapshot struct {
	ICount      *int64 `json:"icount,omitempty"`
	ClockNsec   int64  `json:"vm-clock-nsec"`
	Name        string `json:"name"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	ClockSec    int64  `json:"vm-clock-sec"`
	ID          string `json:"id"`
	VMStateSize int64  `json:"vm-state-size"`
}

// MapEntry is one row of `qemu-img map --output=json`.
type MapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
}

// CheckResult is the result of OpCheck: the counts of `qemu-img check`, and the
// problem lines qemu-img prints on stderr. Supported is false for a format that
// has no checks (raw).
type CheckResult struct {
	Supported          bool     `json:"supported"`
	CheckErrors        int64    `json:"check_errors"`
	Corruptions        int64    `json:"corruptions"`
	Leaks              int64    `json:"leaks"`
	ImageEndOffset     int64    `json:"image_end_offset"`
	TotalClusters      int64    `json:"total_clusters"`
	AllocatedClusters  int64    `json:"allocated_clusters"`
	FragmentedClusters int64    `json:"fragmented_clusters"`
	CompressedClusters int64    `json:"compressed_clusters"`
	Messages           []string `json:"messages"`
}

// RepairArgs are the arguments of OpRepair: Mode is "leaks" or "all". The one
// image of the request is writable.
type RepairArgs struct {
	Mode string `json:"mode"`
}

// RepairResult is what OpRepair reports, in the shape of qemu-img check -r's
// output: the repairing check (its messages, and its counts after the
// repairs), what was fixed, and the second check when something was.
type RepairResult struct {
	Pass             CheckResult  `json:"pass"`
	LeaksFixed       int64        `json:"leaks_fixed"`
	CorruptionsFixed int64        `json:"corruptions_fixed"`
	Final            *CheckResult `json:"final,omitempty"`
	// NeedsRebuild: -r leaks found a refcount structure only -r all
	// repairs; qemu-img fails ("Check failed: Input/output error").
	NeedsRebuild bool `json:"needs_rebuild,omitempty"`
}

// UnmarshalJSON decodes Data into the type that Type names, strictly.
func (f *FormatSpecific) UnmarshalJSON(b []byte) error {
	var raw struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := Decode(b, &raw); err != nil {
		return err
	}
	switch raw.Type {
	case "qcow2":
		f.Data = new(Qcow2Specific)
	case "vmdk":
		f.Data = new(VmdkSpecific)
	default:
		return fmt.Errorf("unknown format-specific type %q", raw.Type)
	}
	f.Type = raw.Type
	return Decode(raw.Data, f.Data)
}

// Decode decodes b into v strictly: unknown fields are an error, and so is
// anything after the document.
func Decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON document")
	}
	return nil
}

// CommitArgs are the arguments of OpCommit. The request's images are the whole
// chain, top first; Base indexes the image committed into (1 for the top's
// backing file). The base is writable, so is the top unless Drop, and so is
// the image just above the base when Base >= 2.
//
// With a broker the worker is handed the top alone, and Base is 0: the host
// reopens the members the commit writes once the chain is known, and the
// base is the deepest of them.
type CommitArgs struct {
	Base int  `json:"base"`
	Drop bool `json:"drop,omitempty"` // -d (and -b): leave the top unchanged
	// Rate limits the bytes written into the base per second; 0 for none.
	Rate int64 `json:"rate,omitempty"`
	// Cache is qemu-img's -t: none, writeback (default), writethrough,
	// directsync or unsafe.
	Cache string `json:"cache,omitempty"`
}

// CommitResult is what OpCommit reports.
type CommitResult struct {
	// ClustersCommitted counts the base clusters (grains; 64 KiB units for
	// raw) that received data or zeros.
	ClustersCommitted int64 `json:"clusters_committed"`
	// BytesCommitted counts the guest bytes written or zeroed in the base.
	BytesCommitted int64 `json:"bytes_committed"`
	// OverlayClustersCleared counts the top's clusters (grains) emptied.
	OverlayClustersCleared int64 `json:"overlay_clusters_cleared"`
	// IntermediateClustersPreserved counts the (sub)clusters or grains of
	// old base data copied into the image just above the base (commit -b),
	// so that it keeps showing what it showed.
	IntermediateClustersPreserved int64 `json:"intermediate_clusters_preserved,omitempty"`
}

// RebaseArgs are the arguments of OpRebase. The request's one image is the
// overlay, writable; the worker asks the broker for the old backing chain
// (safe mode) and for the new backing file and the chain below it.
type RebaseArgs struct {
	Unsafe bool `json:"unsafe,omitempty"`
	// Backing is the new backing file name, written to the header verbatim;
	// empty detaches.
	Backing string `json:"backing"`
	// BackingFormat is -F; empty means detect it from the new backing's
	// magic (never raw).
	BackingFormat string `json:"backing_format,omitempty"`
}

// RebaseResult is the result of OpRebase.
type RebaseResult struct {
	Mode           string `json:"mode"` // "safe" or "unsafe"
	ClustersCopied int64  `json:"clusters_copied"`
	BytesCopied    int64  `json:"bytes_copied"`
	// BackingFormat is the format written to the header ("" when detached).
	BackingFormat string `json:"backing_format,omitempty"`
}

// OpSurvey describes an image's chain to the broker and answers, in one run,
// everything the mount shows about it: the map of the chain and the check of
// the top. Its arguments are SurveyArgs, its result a SurveyResult. It needs
// a broker.
const OpSurvey = "survey"

// SurveyArgs are the arguments of OpSurvey.
type SurveyArgs struct {
	// MapMaxBytes bounds the map as MapArgs.MaxBytes does.
	MapMaxBytes int64 `json:"map_max_bytes,omitempty"`
}

// SurveyResult is the result of OpSurvey: each part is either a result or
// the error that part ended with.
type SurveyResult struct {
	// Images describes every member of the chain, top first, with its
	// snapshots.
	Images     []Info         `json:"images"`
	Map        MapRows        `json:"map,omitempty"`
	MapError   *errcode.Error `json:"map_error,omitempty"`
	Check      *CheckResult   `json:"check,omitempty"`
	CheckError *errcode.Error `json:"check_error,omitempty"`
}
