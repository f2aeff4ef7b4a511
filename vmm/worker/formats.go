package worker

import (
	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/qcow2"
	"instarfs/vmm/worker/internal/raw"
	"instarfs/vmm/worker/internal/vmdk"
)

func rawDetect(first []byte) bool { return raw.Detect(first) }

func (o *opened) openRaw() error {
	var holes raw.HoleFinder
	if o.file != nil {
		holes = fileHoles{o.file}
	}
	o.img = raw.OpenWithHoles(o.r, o.size, holes)
	o.info = proto.Info{Format: "raw", VirtualSize: o.img.VirtualSize()}
	return nil
}

func (o *opened) openVmdk() error {
	v, err := vmdk.Open(o.r, o.size)
	if err != nil {
		return err
	}
	o.v, o.img = v, v
	ext := proto.VmdkExtent{VirtualSize: v.VirtualSize(), ClusterSize: v.GrainSize(), Compressed: v.Compressed()}
	o.info = proto.Info{
		Format:      "vmdk",
		VirtualSize: v.VirtualSize(),
		ClusterSize: v.GrainSize(),
		FormatSpecific: &proto.FormatSpecific{Type: "vmdk", Data: &proto.VmdkSpecific{
			CID: v.CID(), ParentCID: v.ParentCID(), CreateType: v.CreateType(), Extents: []proto.VmdkExtent{ext},
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
	return checkResult(r), nil
}

// checkResult is a qcow2 check report as the host receives it.
func checkResult(r *qcow2.CheckReport) proto.CheckResult {
	res := proto.CheckResult{
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
	return res
}

// checkVmdk is qemu's vmdk check: every allocated grain, compressed or not, must
// start inside the file. The first one that does not fails the check, as in
// qemu-img, which then prints no report and exits 1.
func checkVmdk(o *opened) (any, error) {
	v := o.v
	gd := v.GD()
	perGT := int64(v.NumGTEsPerGT())
	grainSectors := v.GrainSize() / 512
	grains := (v.VirtualSize() + v.GrainSize() - 1) / v.GrainSize()
	verified := map[uint32]bool{} // grain tables already found good
	for g := int64(0); g < grains; g += perGT {
		i := g / perGT
		if gd[i] == 0 || verified[gd[i]] {
			continue
		}
		gt, err := v.GrainTable(int(i))
		if err != nil {
			return nil, errcode.New(errcode.VmdkCorrupt, "could not get cluster_offset for sector %d: %v", g*grainSectors, err)
		}
		for j, e := range gt[:min(perGT, grains-g)] {
			if e == 0 || e == 1 && v.ZeroedGrains() {
				continue
			}
			if int64(e)*512 >= o.size {
				return nil, errcode.New(errcode.VmdkCorrupt, "cluster offset for sector %d points after EOF", (g+int64(j))*grainSectors)
			}
		}
		verified[gd[i]] = true
	}
	return proto.CheckResult{Supported: true}, nil
}
