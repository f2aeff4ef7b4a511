package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// CheckReport is the outcome of a consistency check of one image.
type CheckReport struct {
	Filename string
	Format   string
	proto.CheckResult
}

// Check opens path alone (without locks with forceShare, as -U) and asks a
// worker to check it.
func Check(ctx context.Context, o *Opener, path, format string, forceShare bool) (*CheckReport, error) {
	c, res, err := o.runChain(ctx, path, chainJob{
		op:   proto.OpCheck,
		opts: OpenOptions{Format: format, NoBacking: true, ForceShare: forceShare},
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return decodeCheck(c, res)
}

// CheckChain asks a worker to check the top of an open chain.
func CheckChain(ctx context.Context, sb vmm.Sandbox, c *chainmodel.Chain) (*CheckReport, error) {
	res, err := sb.Run(ctx, vmm.Job{
		Request: proto.Request{Op: proto.OpCheck, Images: c.Refs()},
		Files:   c.Files(),
	})
	if err != nil {
		return nil, err
	}
	return decodeCheck(c, res)
}

// decodeCheck decodes and checks a worker's check of c's top.
func decodeCheck(c *chainmodel.Chain, res json.RawMessage) (*CheckReport, error) {
	var cr proto.CheckResult
	if err := DecodeResult(res, &cr); err != nil {
		return nil, err
	}
	return checkOf(c, cr)
}

// checkOf checks a worker's check of c's top.
func checkOf(c *chainmodel.Chain, cr proto.CheckResult) (*CheckReport, error) {
	r := &CheckReport{Filename: c.Top().Name, Format: c.Top().Info.Format, CheckResult: cr}
	if !validCounts(r.CheckResult) {
		return nil, errcode.New(errcode.WorkerProtocol, "worker reported a negative check count")
	}
	return r, nil
}

// ExitCode is qemu-img check's exit status: 0 clean, 1 the check itself failed,
// 2 corruptions, 3 leaks only, 63 a format without checks.
func (r *CheckReport) ExitCode() int {
	switch {
	case !r.Supported:
		return 63
	case r.CheckErrors != 0:
		return 1
	case r.Corruptions != 0:
		return 2
	case r.Leaks != 0:
		return 3
	}
	return 0
}

// checkJSON is `qemu-img check --output=json`, in qemu-img's key order (the
// order of its QDict's hash buckets); the optional fields appear only when
// non-zero, as in qemu-img.
type checkJSON struct {
	ImageEndOffset     int64  `json:"image-end-offset,omitempty"`
	CompressedClusters int64  `json:"compressed-clusters,omitempty"`
	TotalClusters      int64  `json:"total-clusters,omitempty"`
	Corruptions        int64  `json:"corruptions,omitempty"`
	CorruptionsFixed   int64  `json:"corruptions-fixed,omitempty"`
	CheckErrors        int64  `json:"check-errors"`
	Leaks              int64  `json:"leaks,omitempty"`
	LeaksFixed         int64  `json:"leaks-fixed,omitempty"`
	AllocatedClusters  int64  `json:"allocated-clusters,omitempty"`
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	FragmentedClusters int64  `json:"fragmented-clusters,omitempty"`
}

// Unsupported is the error of a check of a format that has no checks (raw),
// whose exit status is 63; nil for every other report.
func (r *CheckReport) Unsupported() error {
	if r.Supported {
		return nil
	}
	return errcode.New(errcode.CheckUnsupported, "This image format does not support checks")
}

// JSON renders the report as `qemu-img check --output=json` does. For a format
// without checks, where qemu-img prints nothing, it names the file and the
// error, so that nobody takes it for a clean result.
func (r *CheckReport) JSON() []byte {
	if err := r.Unsupported(); err != nil {
		return qemuJSON(struct {
			Filename string         `json:"filename"`
			Format   string         `json:"format"`
			Error    *errcode.Error `json:"error"`
		}{r.Filename, r.Format, err.(*errcode.Error)})
	}
	return r.json(0, 0)
}

func (r *CheckReport) json(leaksFixed, corruptionsFixed int64) []byte {
	j := checkJSON{
		ImageEndOffset:   r.ImageEndOffset,
		CheckErrors:      r.CheckErrors,
		Leaks:            r.Leaks,
		Corruptions:      r.Corruptions,
		LeaksFixed:       leaksFixed,
		CorruptionsFixed: corruptionsFixed,
		Filename:         r.Filename,
		Format:           r.Format,

		TotalClusters:      r.TotalClusters,
		AllocatedClusters:  r.AllocatedClusters,
		FragmentedClusters: r.FragmentedClusters,
		CompressedClusters: r.CompressedClusters,
	}
	return qemuJSON(j)
}

// Human renders the report as qemu-img check does on stdout (a supported one:
// see Unsupported). The lines naming
// each problem are in Messages; qemu-img prints them on stderr.
func (r *CheckReport) Human() []byte {
	var b bytes.Buffer
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		b.WriteString("No errors were found on the image.\n")
	}
	if r.Corruptions != 0 {
		fmt.Fprintf(&b, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
	}
	if r.Leaks != 0 {
		fmt.Fprintf(&b, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", r.Leaks)
	}
	if r.CheckErrors != 0 {
		fmt.Fprintf(&b, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		fmt.Fprintf(&b, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters,
			float64(r.AllocatedClusters)*100/float64(r.TotalClusters),
			float64(r.FragmentedClusters)*100/float64(r.AllocatedClusters),
			float64(r.CompressedClusters)*100/float64(r.AllocatedClusters))
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(&b, "Image end offset: %d\n", r.ImageEndOffset)
	}
	return b.Bytes()
}
