package ctl

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"instarfs/chainmodel"
	"instarfs/errcode"

	"instarfs/vmm/vmmtest"
)

// TestRun checks that Run makes one envelope of any outcome: the result, or
// the error, with the duration and the sandbox, and the error returned is the
// one the envelope reports.
func TestRun(t *testing.T) {
	ok := &Envelope{Operation: "rebase", Image: "a.qcow2", Format: "qcow2"}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		env  *Envelope
		err  error
		code errcode.Code // "" for success
		msg  string
	}{
		{name: "result", ctx: context.Background(), env: ok},
		{name: "error", ctx: context.Background(), err: errcode.New(errcode.Qcow2Corrupt, "bad L1"), code: errcode.Qcow2Corrupt, msg: "bad L1"},
		{name: "wrapped error", ctx: context.Background(), err: fmt.Errorf("opening: %w", errcode.New(errcode.ImageInUse, "locked")),
			code: errcode.ImageInUse, msg: "opening: locked"},
		{name: "error and a result", ctx: context.Background(), env: ok, err: errcode.New(errcode.WriteFailed, "disk full"), code: errcode.WriteFailed, msg: "disk full"},
		{name: "plain error", ctx: context.Background(), err: errors.New("oops"), code: errcode.Internal, msg: "oops"},
		{name: "nothing", ctx: context.Background(), code: errcode.Internal, msg: "rebase returned no result"},
		{name: "plain error after cancel", ctx: cancelled, err: errors.New("read: file closed"), code: errcode.Cancelled,
			msg: "rebase was interrupted: read: file closed"},
		{name: "named error after cancel", ctx: cancelled, err: errcode.New(errcode.ReadFailed, "short read"), code: errcode.ReadFailed, msg: "short read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, err := Run(tc.ctx, "rebase", "a.qcow2", vmmtest.New(nil), func(context.Context) (*Envelope, error) {
				time.Sleep(2 * time.Millisecond)
				return tc.env, tc.err
			})
			if env == nil {
				t.Fatal("no envelope")
			}
			if env.Sandbox != "vmmtest" || env.DurationMS < 2 || env.Operation != "rebase" || env.Image != "a.qcow2" {
				t.Errorf("envelope %+v: want the operation, image, sandbox and duration", env)
			}
			if tc.code == "" {
				if err != nil || env.Error != nil || env.Format != "qcow2" {
					t.Fatalf("got %+v, %v; want the result", env, err)
				}
				return
			}
			if errcode.Of(err) != tc.code || err.Error() != tc.msg {
				t.Errorf("error %s %q, want %s %q", errcode.Of(err), err, tc.code, tc.msg)
			}
			if env.Error == nil || env.Error.Code != tc.code || env.Error.Message != tc.msg || env.Format != "" {
				t.Errorf("envelope %+v error %+v, want only %s %q", env, env.Error, tc.code, tc.msg)
			}
		})
	}
}

// TestJobPanics checks that a job that panics ends as INTERNAL, and the
// manager goes on.
func TestJobPanics(t *testing.T) {
	m := &JobManager{Sandbox: vmmtest.New(nil)}
	j, err := m.Start(JobSpec{Operation: "commit", Image: "a", Top: chainmodel.FileID{Dev: 1, Ino: 1}, Run: func(context.Context, Progress) (*Envelope, error) {
		panic("boom")
	}})
	if err != nil {
		t.Fatal(err)
	}
	env, err := j.Wait(context.Background())
	if errcode.Of(err) != errcode.Internal || env.Error == nil || env.Error.Message != "commit panicked: boom" || env.Sandbox != "vmmtest" {
		t.Fatalf("got %+v, %v", env, err)
	}
	if s := m.Status(chainmodel.FileID{Dev: 1, Ino: 1}); s != "failed commit: INTERNAL: commit panicked: boom" {
		t.Errorf("status %q", s)
	}
}
