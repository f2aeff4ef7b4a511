package chainmodel

import (
	"strings"

	"instarfs/errcode"
	"instarfs/proto"
)

// CheckInfo re-checks what an untrusted worker reported about an image it
// was asked to read as format asked ("" to detect; raw only with detectRaw).
func CheckInfo(info proto.Info, asked string, detectRaw bool) error {
	if !proto.Format(info.Format).Valid() {
		return errcode.New(errcode.WorkerProtocol, "worker reported unknown format %q", info.Format)
	}
	if asked != "" && asked != info.Format {
		return errcode.New(errcode.WorkerProtocol, "worker reported format %q for an image opened as %q", info.Format, asked)
	}
	if asked == "" && !detectRaw && info.Format == "raw" {
		return errcode.New(errcode.WorkerProtocol, "worker reported raw for an image whose format is never inferred as raw")
	}
	if info.VirtualSize < 0 || info.ClusterSize < 0 || len(info.BackingFilename) > MaxBackingName || strings.IndexByte(info.BackingFilename, 0) >= 0 {
		return errcode.New(errcode.WorkerProtocol, "worker reported an invalid size or backing name")
	}
	for _, s := range info.Snapshots {
		if s.VMStateSize < 0 || s.DateSec < 0 || s.DateNsec < 0 || s.ClockSec < 0 || s.ClockNsec < 0 {
			return errcode.New(errcode.WorkerProtocol, "worker reported an invalid snapshot %q", s.ID)
		}
	}
	if fs := info.FormatSpecific; fs != nil {
		if d, ok := fs.Data.(*proto.VmdkSpecific); ok {
			for _, e := range d.Extents {
				if e.VirtualSize < 0 || e.ClusterSize < 0 {
					return errcode.New(errcode.WorkerProtocol, "worker reported an invalid vmdk extent")
				}
			}
		}
	}
	if f := info.BackingFilenameFormat; f != "" && !proto.Format(f).Valid() {
		return errcode.New(errcode.UnknownFormat, "backing format %q is not supported", f)
	}
	return nil
}
