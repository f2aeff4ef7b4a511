package worker

import (
	"fmt"

	"instarfs/chainmodel/layer"
	"instarfs/chainmodel/qcow2"
	"instarfs/chainmodel/raw"
	"instarfs/chainmodel/vmdk"
	"instarfs/errcode"
	"instarfs/vmm"
)

func rawDetect(first []byte) bool { return raw.Detect(first) }

func (o *opened) openRaw() error {
	o.img = raw.OpenWithHoles(o.file, o.size, fileHoles{o.file})
	o.info = vmm.Info{Format: "raw", VirtualSize: o.img.VirtualSize()}
	return nil
}

func (o *opened) openVmdk() error {
	v, err := vmdk.Open(o.file, o.size)
	if err != nil {
		return err
	}
	o.v, o.img = v, v
	ext := vmm.VmdkExtent{VirtualSize: v.VirtualSize(), ClusterSize: v.GrainSize(), Compressed: v.Compressed()}
	o.info = vmm.Info{
		Format:      "vmdk",
		VirtualSize: v.VirtualSize(),
		ClusterSize: v.GrainSize(),
		FormatSpecific: &vmm.FormatSpecific{Type: "vmdk", Data: &vmm.VmdkSpecific{
			CID: v.CID(), ParentCID: v.ParentCID(), CreateType: v.CreateType(), Extents: []vmm.VmdkExtent{ext},
		}},
	}
	if name, ok := v.ParentFileNameHint(); ok && name != "" {
		// qemu forces a vmdk parent's format to vmdk.
		o.info.BackingFilename, o.info.BackingFilenameFormat = name, "vmdk"
	}
	return nil
}

func checkQcow2(o *opened) (any, error) {
	r, err := qcow2.Check(o.file, o.size)
	if err != nil {
		return nil, err
	}
	res := vmm.CheckResult{
		Supported:          true,
		CheckErrors:        r.CheckErrors,
		Corruptions:        r.Corruptions,
		Leaks:              r.Leaks,
		ImageEndOffset:     r.ImageEndOffset,
		TotalClusters:      r.TotalClusters,
		AllocatedClusters:  r.AllocatedClusters,
		FragmentedClusters: r.FragmentedClusters,
		CompressedClusters: r.CompressedClusters,
	}
	for _, m := range r.Messages {
		res.Messages = append(res.Messages, m.Text)
	}
	return res, nil
}

// checkVmdk is qemu's vmdk check: every allocated grain must lie inside the
// file; the first one that does not is reported and ends the check.
func checkVmdk(o *opened) (any, error) {
	res := vmm.CheckResult{Supported: true}
	size := o.img.VirtualSize()
	for off := int64(0); off < size; {
		e, err := o.img.Extent(off)
		if err != nil {
			if errcode.Code(err) == errcode.VmdkCorrupt {
				res.Corruptions++
				res.Messages = append(res.Messages, "ERROR: "+err.Error())
				return res, nil
			}
			return nil, err
		}
		if e.Kind == layer.Data && e.HostOffset >= 0 && e.HostOffset+e.Length > o.size {
			res.Corruptions++
			res.Messages = append(res.Messages, fmt.Sprintf("ERROR: cluster offset for sector %d points after end of file", off/512))
			return res, nil
		}
		off = e.End()
	}
	return res, nil
}
