package vmm

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// ProbeArgs are the arguments of OpProbe.
type ProbeArgs struct {
	// DetectRaw lets the worker report raw for a file that carries a partition
	// table; otherwise a file that is neither qcow2 nor vmdk is refused.
	DetectRaw bool `json:"detect_raw,omitempty"`
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

// VmdkExtent is one extent of a vmdk image as qemu-img info reports it.
type VmdkExtent struct {
	Filename    string `json:"filename,omitempty"`
	VirtualSize int64  `json:"virtual-size"`
	ClusterSize int64  `json:"cluster-size"`
	Format      string `json:"format"`
	Compressed  bool   `json:"compressed,omitempty"`
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

// UnmarshalJSON decodes Data into the type that Type names, strictly.
func (f *FormatSpecific) UnmarshalJSON(b []byte) error {
	var raw struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := strictUnmarshal(b, &raw); err != nil {
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
	return strictUnmarshal(raw.Data, f.Data)
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
