package worker

import (
	"context"
	"errors"

	"instarfs/errcode"

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
		if err != nil && len(imgs) == 0 {
			return nil, err
		}
		return proto.ChainInfo{Images: infos(imgs), Error: asError(err)}, nil
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
	if err := s.needDrives(imgs, portMapLimit); err != nil {
		return nil, err
	}
	chain := make([]member, len(imgs))
	for i, o := range imgs {
		chain[i] = o.member()
	}
	rows, err := chainMap(chain, args.MaxBytes)
	if err != nil {
		return nil, err
	}
	return proto.MapRows(rows), nil
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

func opSurvey(_ context.Context, s *session) (any, error) {
	var args proto.SurveyArgs
	if err := s.args(&args); err != nil {
		return nil, err
	}
	if !s.req.Broker {
		return nil, errcode.New(errcode.WorkerProtocol, "%s needs a broker", s.req.Op)
	}
	imgs, err := s.discover(true)
	if err != nil {
		return nil, err
	}
	if err := s.needDrives(imgs, portMapLimit); err != nil {
		return nil, err
	}
	res := proto.SurveyResult{Images: infos(imgs)}
	chain := make([]member, len(imgs))
	for i, o := range imgs {
		chain[i] = o.member()
	}
	rows, err := chainMap(chain, args.MapMaxBytes)
	res.Map = rows
	res.MapError = asError(err)
	var check any
	switch o := imgs[0]; o.format {
	case "qcow2":
		check, err = checkQcow2(o)
	case "vmdk":
		check, err = checkVmdk(o)
	default:
		check, err = proto.CheckResult{Supported: false}, nil
	}
	if cr, ok := check.(proto.CheckResult); ok && err == nil {
		res.Check = &cr
	}
	res.CheckError = asError(err)
	return res, nil
}

// asError is err as the host receives it; nil for nil.
func asError(err error) *errcode.Error {
	if err == nil {
		return nil
	}
	var e *errcode.Error
	if errors.As(err, &e) {
		return e
	}
	return errcode.New(errcode.Internal, "%v", err)
}

// infos are the descriptions of imgs.
func infos(imgs []*opened) []proto.Info {
	out := make([]proto.Info, len(imgs))
	for i, o := range imgs {
		out[i] = o.info
	}
	return out
}
