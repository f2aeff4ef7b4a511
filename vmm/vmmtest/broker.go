package vmmtest

import (
	"encoding/json"
	"os"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// Describe is what a fake worker reads in the nth member it opens of a
// brokered run (0 is the top, then each backing file in the order it asked
// for them), given as ref and f: the member's description, or the error
// reading it fails with.
type Describe func(n int, ref proto.ImageRef, f *os.File) (proto.Info, error)

// Discover asks job's broker for the images of its operation as a worker
// does (vmm/worker's discover): it describes the top and, when the operation
// reads the chain, asks for each backing file in turn until the chain ends;
// a rebase then asks for the new backing file (and, in safe mode, the chain
// below it). It returns the descriptions of the top's chain, top first. A
// refusal of the broker ends it with that error, returned with the members
// described so far (the one the refused question was about included); so
// does a member describe fails on, returned with the members above it.
func Discover(job vmm.Job, describe Describe) ([]proto.Info, error) {
	req := job.Request
	if job.Broker == nil || len(req.Images) == 0 || len(job.Files) == 0 {
		return nil, errcode.New(errcode.Internal, "vmmtest: a %s run without a broker and a top", req.Op)
	}
	chain, rebase := true, proto.RebaseArgs{}
	switch req.Op {
	case proto.OpProbe:
		var args proto.ProbeArgs
		json.Unmarshal(req.Args, &args)
		chain = args.Chain
	case proto.OpCheck, proto.OpRepair:
		chain = false
	case proto.OpRebase:
		json.Unmarshal(req.Args, &rebase)
		chain = !rebase.Unsafe
	}
	d := discovery{job: job, describe: describe}
	top := req.Images[0]
	infos, err := d.walk(0, top, job.Files[0], chain)
	if err != nil || req.Op != proto.OpRebase || rebase.Backing == "" {
		return infos, err
	}
	reply, files, err := d.ask(proto.BrokerRequest{Image: 0, Open: proto.OpenNewBacking})
	if err != nil || reply.Same {
		return infos, err
	}
	_, err = d.walk(reply.Image, proto.ImageRef{Name: reply.Name, Format: reply.Format, Writable: reply.Writable}, files[0], !rebase.Unsafe)
	return infos, err
}

// discovery is one fake worker's questions to a broker.
type discovery struct {
	job      vmm.Job
	describe Describe
	n        int // members opened so far
}

// walk describes member i, opened as ref on f, and with chain the members
// below it, and returns their descriptions.
func (d *discovery) walk(i int, ref proto.ImageRef, f *os.File, chain bool) ([]proto.Info, error) {
	var infos []proto.Info
	for {
		info, err := d.describe(d.n, ref, f)
		d.n++
		if err != nil {
			return infos, err
		}
		infos = append(infos, info)
		brief := info
		brief.Snapshots = nil
		q := proto.BrokerRequest{Image: i, Info: &brief}
		if chain && info.BackingFilename != "" {
			q.Open = proto.OpenBacking
		}
		reply, files, err := d.ask(q)
		if err != nil || q.Open == "" {
			return infos, err
		}
		i, ref, f = reply.Image, proto.ImageRef{Name: reply.Name, Format: reply.Format, Writable: reply.Writable}, files[0]
	}
}

// ask puts one question to the broker: its refusal is the error.
func (d *discovery) ask(q proto.BrokerRequest) (proto.BrokerReply, []*os.File, error) {
	reply, files := d.job.Broker.Answer(q)
	switch {
	case reply.Error != nil:
		return reply, nil, reply.Error
	case q.Open != "" && !reply.Same && len(files) == 0:
		return reply, nil, errcode.New(errcode.WorkerProtocol, "vmmtest: the broker answered a request to open a file without one")
	}
	return reply, files, nil
}

// Reported is the error a run ends in when its worker reports err: a code a
// worker may not send (a broker's refusal a worker passed on) is the host's
// WORKER_PROTOCOL, as a backend decodes it.
func Reported(err error) error {
	if code := errcode.Of(err); code != "" && !code.FromWorker() {
		return errcode.New(errcode.WorkerProtocol, "invalid worker output: error code %q is not one a worker may send (vmmtest)", code)
	}
	return err
}
