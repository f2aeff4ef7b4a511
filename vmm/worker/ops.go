package worker

import (
	"context"

	"instarfs/proto"
)

func opProbe(_ context.Context, s *session) (any, error) {
	if err := s.need(1); err != nil {
		return nil, err
	}
	var args proto.ProbeArgs
	if err := s.args(&args); err != nil {
		return nil, err
	}
	if s.req.Broker {
		imgs, err := s.discover(args.Chain)
		if err != nil {
			return nil, err
		}
		return imgs[0].info, nil
	}
	o, err := openImage(s.files[0], s.req.Images[0], args.DetectRaw)
	if err != nil {
		return nil, err
	}
	return o.info, nil
}

func opMap(_ context.Context, s *session) (any, error) {
	var args proto.MapArgs
	if err := s.args(&args); err != nil {
		return nil, err
	}
	if err := s.need(1); err != nil {
		return nil, err
	}
	imgs, err := s.discover(true)
	if err != nil {
		return nil, err
	}
	chain := make([]member, len(imgs))
	for i, o := range imgs {
		chain[i] = o.member()
	}
	return chainMap(chain, args.MaxBytes, s.out.progress)
}

func opCheck(_ context.Context, s *session) (any, error) {
	if err := s.need(1); err != nil {
		return nil, err
	}
	imgs, err := s.discover(false)
	if err != nil {
		return nil, err
	}
	o := imgs[0]
	switch o.format {
	case "qcow2":
		return checkQcow2(o)
	case "vmdk":
		return checkVmdk(o)
	}
	return proto.CheckResult{Supported: false}, nil
}
