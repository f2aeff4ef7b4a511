package worker

import (
	"context"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm/worker/internal/qcow2"
)

// opRepair is qemu-img check -r on image 0. Only qcow2 has repairs; qemu-img
// says "This image format does not support checks" for the others (vmdk
// too: its check refuses a fix mode), and so does the result here.
func opRepair(_ context.Context, s *session) (any, error) {
	if err := s.need(1); err != nil {
		return nil, err
	}
	var args proto.RepairArgs
	if err := s.args(&args); err != nil {
		return nil, err
	}
	mode := map[string]qcow2.RepairMode{"leaks": qcow2.RepairLeaks, "all": qcow2.RepairAll}[args.Mode]
	if mode == 0 {
		return nil, errcode.New(errcode.WorkerProtocol, "repair: unknown mode %q", args.Mode)
	}
	if !s.req.Images[0].Writable {
		return nil, errcode.New(errcode.WorkerProtocol, "repair: the image was not handed over writable")
	}
	imgs, err := s.discover(false)
	if err != nil {
		return nil, err
	}
	o := imgs[0]
	if o.format != "qcow2" {
		return proto.RepairResult{Pass: proto.CheckResult{Supported: false}}, nil
	}
	r, err := qcow2.Repair(ImageFile{o.file}, o.size, mode)
	if err != nil {
		return nil, err
	}
	res := proto.RepairResult{
		Pass:             checkResult(r.Pass),
		LeaksFixed:       r.LeaksFixed,
		CorruptionsFixed: r.CorruptionsFixed,
		NeedsRebuild:     r.NeedsRebuild,
	}
	if r.Final != nil {
		f := checkResult(r.Final)
		res.Final = &f
	}
	return res, nil
}
