package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/proto"
)

// A rebase's worker discovers the chains through the broker: a request that
// hands it the images without one is the host breaking the protocol, refused
// before anything is opened.
func TestRebaseNeedsBroker(t *testing.T) {
	for _, args := range []string{`{"backing":"new.qcow2"}`, `{"backing":""}`, `{"unsafe":true,"backing":"new.qcow2"}`} {
		f, err := os.Create(filepath.Join(t.TempDir(), "ov.qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		s := benchSession(proto.OpRebase, []*os.File{f}, []string{"ov.qcow2"}, args)
		s.broker = -1
		_, err = opRebase(t.Context(), s)
		if errcode.Of(err) != errcode.WorkerProtocol || !strings.Contains(err.Error(), "needs a broker") {
			t.Errorf("rebase %s without a broker: %v, want %s: needs a broker", args, err, errcode.WorkerProtocol)
		}
	}
}
