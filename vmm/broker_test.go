package vmm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/proto"
)

// fileBroker answers every question with one file, or with a refusal for
// image 9.
type fileBroker struct {
	file *os.File
	asks int
}

func (b *fileBroker) Answer(req proto.BrokerRequest) (proto.BrokerReply, []*os.File) {
	b.asks++
	if req.Image == 9 {
		return proto.BrokerReply{Error: errcode.New(errcode.BackingNotFound, "no image 9")}, nil
	}
	return proto.BrokerReply{Image: req.Image + 1, Name: "base"}, []*os.File{b.file}
}

// TestBroker runs a worker that asks a broker, well and badly: answers and
// descriptors arrive; a question that is too long, not strict JSON, or one
// too many kills the worker (WORKER_PROTOCOL).
func TestBroker(t *testing.T) {
	path := filepath.Join(t.TempDir(), "base")
	if err := os.WriteFile(path, []byte("base bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	many := make([]string, proto.MaxBrokerRequests+1)
	for i := range many {
		many[i] = `{"image":0}`
	}
	for _, tc := range []struct {
		name      string
		questions []string
		want      string // in the result; "" when the run must fail
	}{
		{"answer with a file", []string{`{"image":0,"open":"backing"}`}, `"image":1,"name":"base"} file:base bytes`},
		{"refusal", []string{`{"image":9,"open":"backing"}`}, `BACKING_NOT_FOUND`},
		{"too long", []string{`{"image":0,"open":"` + strings.Repeat("x", proto.MaxBrokerBytes) + `"}`}, ""},
		{"unknown field", []string{`{"image":0,"path":"/etc/passwd"}`}, ""},
		{"not json", []string{`open /etc/passwd`}, ""},
		{"too many", many, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, _ := json.Marshal(tc.questions)
			b := &fileBroker{file: f}
			res, err := plainProcess().Run(context.Background(), Job{
				Request: proto.Request{Op: "broker", Args: args},
				Broker:  b,
			})
			if tc.want == "" {
				if errcode.Of(err) != errcode.WorkerProtocol {
					t.Fatalf("result %s, error %v; want WORKER_PROTOCOL", res, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(res), strings.ReplaceAll(tc.want, `"`, `\"`)) {
				t.Fatalf("result %s, want it to contain %s", res, tc.want)
			}
		})
	}
}
