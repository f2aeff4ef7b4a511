package ctl

import (
	"strings"
	"testing"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
)

// probeFormats are the formats a host may ask a probe for; "" detects.
var probeFormats = []string{"", "qcow2", "vmdk", "raw"}

// FuzzDecodeInfo feeds arbitrary worker results to the host's decoding of a
// probe: DecodeResult into proto.Info, then chainmodel.CheckInfo. Neither may panic,
// every refusal carries a named code, and whatever is accepted satisfies what
// the rest of the host relies on.
func FuzzDecodeInfo(f *testing.F) {
	for _, s := range []string{
		`{"format":"raw","virtual-size":1048576,"dirty-flag":false}`,
		`{"format":"qcow2","virtual-size":67108864,"cluster-size":65536,"backing-filename":"base.qcow2","backing-filename-format":"qcow2","dirty-flag":false,` +
			`"format-specific":{"type":"qcow2","data":{"compat":"1.1","compression-type":"zlib","lazy-refcounts":false,"refcount-bits":16,"corrupt":false,"extended-l2":false}}}`,
		`{"format":"vmdk","virtual-size":4194304,"cluster-size":65536,"dirty-flag":false,` +
			`"format-specific":{"type":"vmdk","data":{"cid":1,"parent-cid":4294967295,"create-type":"monolithicSparse","extents":[{"virtual-size":4194304,"cluster-size":65536,"format":"SPARSE"}]}}}`,
		`{"format":"qcow2","virtual-size":1,"dirty-flag":true,"snapshots":[{"icount":5,"vm-clock-nsec":1,"name":"s","date-sec":1,"date-nsec":2,"vm-clock-sec":3,"id":"1","vm-state-size":0}]}`,
		`{"format":"qcow2","virtual-size":-1,"dirty-flag":false}`,
		`{"format":"qcow3","virtual-size":1,"dirty-flag":false}`,
		`{"format":"qcow2","virtual-size":1,"backing-filename":"a\u0000b","dirty-flag":false}`,
		`{"format":"qcow2","virtual-size":1,"backing-filename":"b","backing-filename-format":"vvfat","dirty-flag":false}`,
		`{"format":"qcow2","virtual-size":1,"dirty-flag":false,"format-specific":{"type":"luks","data":{}}}`,
		`{"format":"qcow2","virtual-size":1,"dirty-flag":false,"format-specific":{"type":"vmdk","data":{"cid":1,"extra":2}}}`,
		`{"format":"qcow2","virtual-size":1,"dirty-flag":false,"unknown":1}`,
		`{"format":"qcow2","virtual-size":9223372036854775808}`,
		`{"format":"qcow2"} {"format":"raw"}`,
		`[]`, `null`, ``,
	} {
		for _, asked := range probeFormats {
			f.Add([]byte(s), asked)
		}
	}
	f.Fuzz(func(t *testing.T, res []byte, asked string) {
		var info proto.Info
		if err := DecodeResult(res, &info); err != nil {
			if c := errcode.Of(err); c != errcode.WorkerProtocol {
				t.Fatalf("DecodeResult failed with %s, want %s: %v", c, errcode.WorkerProtocol, err)
			}
			return
		}
		if err := chainmodel.CheckInfo(info, asked, false); err != nil {
			if c := errcode.Of(err); c != errcode.WorkerProtocol && c != errcode.UnknownFormat {
				t.Fatalf("validateInfo failed with %s: %v", c, err)
			}
			return
		}
		checkInfoInvariants(t, info, asked)
	})
}

// checkInfoInvariants fails t unless info, accepted for a probe that asked
// for format asked, is something the host can use.
func checkInfoInvariants(t *testing.T, info proto.Info, asked string) {
	t.Helper()
	switch info.Format {
	case "qcow2", "vmdk", "raw":
	default:
		t.Fatalf("accepted format %q", info.Format)
	}
	if asked != "" && info.Format != asked {
		t.Fatalf("accepted format %q for a probe that asked for %q", info.Format, asked)
	}
	if info.VirtualSize < 0 {
		t.Fatalf("accepted virtual size %d", info.VirtualSize)
	}
	if len(info.BackingFilename) > chainmodel.MaxBackingName || strings.IndexByte(info.BackingFilename, 0) >= 0 {
		t.Fatalf("accepted backing name %q", info.BackingFilename)
	}
	switch info.BackingFilenameFormat {
	case "", "qcow2", "vmdk", "raw":
	default:
		t.Fatalf("accepted backing format %q", info.BackingFilenameFormat)
	}
	if fs := info.FormatSpecific; fs != nil {
		var ok bool
		switch fs.Type {
		case "qcow2":
			_, ok = fs.Data.(*proto.Qcow2Specific)
		case "vmdk":
			_, ok = fs.Data.(*proto.VmdkSpecific)
		}
		if !ok {
			t.Fatalf("accepted format-specific type %q with data %T", fs.Type, fs.Data)
		}
	}
}
