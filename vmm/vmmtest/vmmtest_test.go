package vmmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
)

// codeOf is err's code, "" for no error.
func codeOf(err error) errcode.Code {
	if err == nil {
		return ""
	}
	return errcode.Of(err)
}

func job(op string) vmm.Job {
	return vmm.Job{Request: proto.Request{Op: op}}
}

// TestFailures checks that every failure is the error of its row of the
// outcome table, as the host tells them apart.
func TestFailures(t *testing.T) {
	want := map[Failure]errcode.Code{
		Violation:   errcode.SandboxViolation,
		Cancelled:   errcode.Cancelled,
		Timeout:     errcode.WorkerTimeout,
		BadOutput:   errcode.WorkerProtocol,
		Crash:       errcode.WorkerCrashed,
		Unstartable: errcode.SandboxUnavailable,
	}
	if len(Failures) != len(want) {
		t.Fatalf("%d failures listed, %d known", len(Failures), len(want))
	}
	for _, f := range Failures {
		sb := New(map[string]Answer{proto.OpProbe: f.Answer()})
		res, err := sb.Run(context.Background(), job(proto.OpProbe))
		if res != nil || codeOf(err) != want[f] {
			t.Errorf("%v: %s, %v; want %s", f, res, err, want[f])
		}
		var se *vmm.StartError
		if errors.As(err, &se) != (f == Unstartable) {
			t.Errorf("%v: %T is a *vmm.StartError: %v", f, err, f == Unstartable)
		}
	}
}

// TestRun checks answers by operation and by function, progress, the
// counts, and what a backend does before it answers.
func TestRun(t *testing.T) {
	sb := New(map[string]Answer{proto.OpProbe: {Result: []byte(`{"format":"raw"}`), Progress: []float64{0.5, 1}}})
	var progress []float64
	j := job(proto.OpProbe)
	j.Progress = func(p float64) { progress = append(progress, p) }
	if res, err := sb.Run(context.Background(), j); err != nil || string(res) != `{"format":"raw"}` {
		t.Errorf("probe: %s, %v", res, err)
	}
	if !reflect.DeepEqual(progress, []float64{0.5, 1}) {
		t.Errorf("progress %v", progress)
	}
	if _, err := sb.Run(context.Background(), job(proto.OpMap)); codeOf(err) != errcode.Internal {
		t.Errorf("an operation without an answer: %v", err)
	}
	sb.Set(proto.OpMap, Result(`[]`))
	if res, err := sb.Run(context.Background(), job(proto.OpMap)); err != nil || string(res) != `[]` {
		t.Errorf("map after Set: %s, %v", res, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sb.Run(ctx, job(proto.OpProbe)); codeOf(err) != errcode.Cancelled {
		t.Errorf("a cancelled context: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), -1)
	defer cancel()
	if _, err := sb.Run(ctx, job(proto.OpProbe)); codeOf(err) != errcode.WorkerTimeout {
		t.Errorf("a passed deadline: %v", err)
	}
	j = job(proto.OpProbe)
	j.Request.Images = []proto.ImageRef{{Name: "a"}}
	if _, err := sb.Run(context.Background(), j); codeOf(err) != errcode.Internal {
		t.Errorf("an image without a descriptor: %v", err)
	}
	if got := []int{sb.Runs(proto.OpProbe), sb.Runs(proto.OpMap), sb.Runs(proto.OpCheck), sb.Runs("")}; !reflect.DeepEqual(got, []int{4, 2, 0, 6}) {
		t.Errorf("runs of probe, map, check, all: %v", got)
	}

	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	byName := Func(func(_ context.Context, j vmm.Job) Answer {
		return Result(`"` + j.Request.Images[0].Name + `"`)
	})
	j.Files = []*os.File{f}
	if res, err := byName.Run(context.Background(), j); err != nil || string(res) != `"a"` {
		t.Errorf("answer by function: %s, %v", res, err)
	}
	if s, err := byName.Start(context.Background(), j); s != nil || codeOf(err) != errcode.SandboxUnavailable {
		t.Errorf("Start: %v, %v", s, err)
	}
}

// recorder is a broker that opens every file it is asked for (the null
// device, numbered in turn) and refuses the question numbered refuse (from
// 1; 0 for none). It keeps the questions.
type recorder struct {
	t         *testing.T
	refuse    int
	questions []string
	members   int
}

func (r *recorder) Answer(req proto.BrokerRequest) (proto.BrokerReply, []*os.File) {
	q := fmt.Sprintf("%d %v %s", req.Image, req.Info != nil, req.Open)
	r.questions = append(r.questions, strings.TrimSpace(q))
	if len(r.questions) == r.refuse {
		return proto.BrokerReply{Error: errcode.New(errcode.BackingPathOutsideRoot, "refused")}, nil
	}
	if req.Open == "" {
		return proto.BrokerReply{}, nil
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { f.Close() })
	r.members++
	return proto.BrokerReply{Image: r.members, Name: fmt.Sprintf("m%d", r.members)}, []*os.File{f}
}

// TestBrokered checks that a run with a broker asks it for the members its
// canned chain names, in a worker's order, and ends as a worker's run does
// when the broker refuses.
func TestBrokered(t *testing.T) {
	backed := func(name string) proto.Info {
		return proto.Info{Format: "qcow2", VirtualSize: 512, BackingFilename: name, BackingFilenameFormat: "qcow2"}
	}
	chain := []proto.Info{backed("b"), backed("c"), {Format: "qcow2", VirtualSize: 512}}
	args := func(v any) []byte { b, _ := json.Marshal(v); return b }
	tests := []struct {
		name      string
		op        string
		args      []byte
		refuse    int
		questions []string
		res       string       // the result, "" for an error
		code      errcode.Code // of the error
	}{
		{"probe of a chain", proto.OpProbe, args(proto.ProbeArgs{Chain: true}), 0,
			[]string{"0 true backing", "1 true backing", "2 true"}, `{"images":[{"format":"qcow2","virtual-size":512,"backing-filename":"b","backing-filename-format":"qcow2","dirty-flag":false},{"format":"qcow2","virtual-size":512,"backing-filename":"c","backing-filename-format":"qcow2","dirty-flag":false},{"format":"qcow2","virtual-size":512,"dirty-flag":false}]}`, ""},
		{"probe of the top", proto.OpProbe, args(proto.ProbeArgs{}), 0,
			[]string{"0 true"}, `{"images":[{"format":"qcow2","virtual-size":512,"backing-filename":"b","backing-filename-format":"qcow2","dirty-flag":false}]}`, ""},
		{"check", proto.OpCheck, nil, 0, []string{"0 true"}, `"done"`, ""},
		{"map", proto.OpMap, nil, 0, []string{"0 true backing", "1 true backing", "2 true"}, `"done"`, ""},
		{"probe refused below the top", proto.OpProbe, args(proto.ProbeArgs{Chain: true}), 2,
			[]string{"0 true backing", "1 true backing"}, `{"images":[{"format":"qcow2","virtual-size":512,"backing-filename":"b","backing-filename-format":"qcow2","dirty-flag":false},{"format":"qcow2","virtual-size":512,"backing-filename":"c","backing-filename-format":"qcow2","dirty-flag":false}],"error":{"code":"BACKING_PATH_OUTSIDE_ROOT","message":"refused"}}`, ""},
		{"probe refused at the top", proto.OpProbe, args(proto.ProbeArgs{Chain: true}), 1,
			[]string{"0 true backing"}, `{"images":[{"format":"qcow2","virtual-size":512,"backing-filename":"b","backing-filename-format":"qcow2","dirty-flag":false}],"error":{"code":"BACKING_PATH_OUTSIDE_ROOT","message":"refused"}}`, ""},
		{"map refused", proto.OpMap, nil, 2, []string{"0 true backing", "1 true backing"}, "", errcode.WorkerProtocol},
		{"unsafe rebase", proto.OpRebase, args(proto.RebaseArgs{Unsafe: true, Backing: "n"}), 0,
			[]string{"0 true", "0 false new-backing", "1 true"}, `"done"`, ""},
		{"safe rebase", proto.OpRebase, args(proto.RebaseArgs{Backing: "n"}), 0,
			[]string{"0 true backing", "1 true backing", "2 true", "0 false new-backing", "3 true"}, `"done"`, ""},
		{"rebase refused the new backing file", proto.OpRebase, args(proto.RebaseArgs{Unsafe: true, Backing: "n"}), 2,
			[]string{"0 true", "0 false new-backing"}, "", errcode.WorkerProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := &recorder{t: t, refuse: tt.refuse}
			a := Answer{Chain: chain}
			if tt.op != proto.OpProbe {
				a.Result = json.RawMessage(`"done"`)
			}
			if tt.op == proto.OpRebase {
				a.Chain = append(chain[:len(chain):len(chain)], proto.Info{Format: "raw", VirtualSize: 512})
			}
			sb := New(map[string]Answer{tt.op: a})
			res, err := sb.Run(context.Background(), vmm.Job{
				Request: proto.Request{Op: tt.op, Images: []proto.ImageRef{{Name: "top"}}, Args: tt.args},
				Files:   []*os.File{f},
				Broker:  b,
			})
			if string(res) != tt.res || codeOf(err) != tt.code {
				t.Errorf("%s, %v; want %s, %s", res, err, tt.res, tt.code)
			}
			if !reflect.DeepEqual(b.questions, tt.questions) {
				t.Errorf("questions %q, want %q", b.questions, tt.questions)
			}
		})
	}
}
