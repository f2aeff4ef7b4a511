package ctl

import (
	"context"
	"encoding/json"

	"instarfs/chainmodel"
	"instarfs/errcode"
	"instarfs/proto"
)

// Survey is everything the mount shows about an image, from one worker run:
// its chain (open; Close releases it), the chain's map and the top's check,
// each or the error it ended with.
type Survey struct {
	Chain    *chainmodel.Chain
	Map      *MapResult
	MapErr   error
	Check    *CheckReport
	CheckErr error
}

// Close releases the chain's files.
func (s *Survey) Close() { s.Chain.Close() }

// SurveyChain opens the chain of the image at path and asks one worker for
// its description, its map (bounded by maxMapBytes as MapChain bounds it) and
// the check of its top.
func SurveyChain(ctx context.Context, o *Opener, path string, opts OpenOptions, maxMapBytes int64) (*Survey, error) {
	var r proto.SurveyResult
	c, _, err := o.runChain(ctx, path, chainJob{
		op:   proto.OpSurvey,
		args: proto.SurveyArgs{MapMaxBytes: maxMapBytes},
		opts: opts,
		infos: func(res json.RawMessage) ([]proto.Info, error, error) {
			err := DecodeResult(res, &r)
			return r.Images, nil, err
		},
	})
	if err != nil {
		return nil, err
	}
	s := &Survey{Chain: c}
	switch {
	case r.MapError != nil:
		s.MapErr = r.MapError
	default:
		s.Map, s.MapErr = mapOf(c, r.Map)
	}
	switch {
	case r.CheckError != nil:
		s.CheckErr = r.CheckError
	case r.Check == nil:
		s.CheckErr = errcode.New(errcode.WorkerProtocol, "worker reported neither a check nor its error")
	default:
		s.Check, s.CheckErr = checkOf(c, *r.Check)
	}
	return s, nil
}

// KnownChain opens the chain of the image at path without a worker, when the
// probe cache describes every member as it is now; otherwise it returns nil.
func (o *Opener) KnownChain(path string, opts OpenOptions) *chainmodel.Chain {
	return o.cachedChain(path, opts)
}
