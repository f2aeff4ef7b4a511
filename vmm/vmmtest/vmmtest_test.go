package vmmtest

import (
	"context"
	"errors"
	"os"
	"reflect"
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
