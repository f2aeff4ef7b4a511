package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"instarfs/errcode"
	"instarfs/proto"
)

// sessionWorker answers frames by what they say: "ok N" with N bytes 'x',
// "err" with an error frame, and the rest with the misbehaviour they name.
func sessionWorker(in io.Reader, shared []byte) {
	out := func(status byte, body []byte) {
		hdr := []byte{status, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)))
		os.Stdout.Write(append(hdr, body...))
	}
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		io.ReadFull(in, body)
		cmd, arg, _ := strings.Cut(string(body), " ")
		n, _ := strconv.Atoi(arg)
		switch cmd {
		case "ok":
			out(proto.FrameOK, bytes.Repeat([]byte("x"), n))
		case "shared":
			copy(shared, bytes.Repeat([]byte("y"), n))
			hdr := []byte{proto.FrameShared, 0, 0, 0, 0}
			binary.BigEndian.PutUint32(hdr[1:], uint32(n))
			os.Stdout.Write(hdr)
		case "err":
			b, _ := json.Marshal(errcode.New(errcode.ReadFailed, "bad \x1b[31msector"))
			out(proto.FrameError, b)
		case "err-bad":
			out(proto.FrameError, []byte(`{"code":"lower","message":"x"}`))
		case "err-host":
			out(proto.FrameError, []byte(`{"code":"IMAGE_IN_USE","message":"x"}`))
		case "err-long":
			out(proto.FrameError, bytes.Repeat([]byte("e"), proto.MaxErrorLineBytes+1))
		case "status":
			out(7, nil)
		case "short":
			os.Stdout.Write([]byte{proto.FrameOK, 0, 0, 0, 16, 'x'})
			os.Exit(0)
		case "die":
			os.Exit(3)
		case "hang":
			time.Sleep(time.Hour)
		}
	}
}

func startSession(t *testing.T, op string) (*Session, error) {
	t.Helper()
	s, err := plainProcess().Start(context.Background(), Job{Request: proto.Request{Op: op}, Timeout: time.Minute, Shared: 64})
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

func TestSessionCalls(t *testing.T) {
	s, err := startSession(t, "session")
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Ready) != `"ready"` {
		t.Fatalf("ready document %s", s.Ready)
	}
	buf := make([]byte, 64)
	for i := 0; i < 3; i++ {
		n, err := s.Call(context.Background(), []byte("ok 64"), buf)
		if err != nil || n != 64 || buf[63] != 'x' {
			t.Fatalf("call %d: %d, %v", i, n, err)
		}
	}
	if n, err := s.Call(context.Background(), []byte("shared 40"), buf); err != nil || n != 40 || !bytes.Equal(buf[:n], bytes.Repeat([]byte("y"), 40)) {
		t.Fatalf("shared reply: %d, %v", n, err)
	}
	_, err = s.Call(context.Background(), []byte("err"), buf)
	if errcode.Of(err) != errcode.ReadFailed || strings.ContainsRune(err.Error(), 0x1b) {
		t.Fatalf("error frame: %v", err)
	}
	if n, err := s.Call(context.Background(), []byte("ok 1"), buf); err != nil || n != 1 {
		t.Fatalf("after an error frame: %d, %v", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Call(ctx, []byte("ok 1"), buf); errcode.Of(err) != errcode.Cancelled {
		t.Fatalf("cancelled call: %v", err)
	}
	if _, err := s.Call(context.Background(), make([]byte, proto.MaxFrameRequest+1), buf); errcode.Of(err) != errcode.Internal {
		t.Fatalf("oversized request: %v", err)
	}
	pid := s.Pid()
	s.Close()
	if _, err := s.Call(context.Background(), []byte("ok 1"), buf); err == nil {
		t.Fatal("call after Close succeeded")
	}
	if err := syscallKill0(pid); err == nil {
		t.Errorf("worker %d still runs after Close", pid)
	}
}

func TestSessionHostileReplies(t *testing.T) {
	for _, tc := range []struct {
		req  string
		code errcode.Code
	}{
		{"ok 65", errcode.WorkerProtocol},     // longer than asked
		{"shared 65", errcode.WorkerProtocol}, // longer than asked and shared
		{"err-bad", errcode.WorkerProtocol},
		{"err-host", errcode.WorkerProtocol}, // a code only the host may give
		{"err-long", errcode.WorkerProtocol},
		{"status", errcode.WorkerProtocol},
		{"short", errcode.WorkerCrashed},
		{"die", errcode.WorkerCrashed},
		{"hang", errcode.WorkerTimeout},
	} {
		t.Run(tc.req, func(t *testing.T) {
			if tc.code == errcode.WorkerTimeout {
				// Only the hanging worker waits the timeout out: a short one
				// for every case failed the others under the race detector.
				old := callTimeout
				callTimeout = 500 * time.Millisecond
				defer func() { callTimeout = old }()
			}
			s, err := startSession(t, "session")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			if _, err := s.Call(context.Background(), []byte(tc.req), buf); errcode.Of(err) != tc.code {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
			// The session is over: the next call fails the same way.
			if _, err := s.Call(context.Background(), []byte("ok 1"), buf); errcode.Of(err) != tc.code {
				t.Fatalf("next call: %v, want %s", err, tc.code)
			}
		})
	}
}

func TestSessionStartFailures(t *testing.T) {
	for _, tc := range []struct {
		op   string
		code errcode.Code
	}{
		{"session-error", errcode.ReadFailed},
		{"session-garbage", errcode.WorkerProtocol},
		{"die-at-once", errcode.WorkerCrashed}, // exits without a ready line
	} {
		t.Run(tc.op, func(t *testing.T) {
			if _, err := startSession(t, tc.op); errcode.Of(err) != tc.code {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
		})
	}
}

func syscallKill0(pid int) error {
	p, _ := os.FindProcess(pid)
	return p.Signal(syscall.Signal(0))
}
