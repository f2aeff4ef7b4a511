package qcow2

import (
	"bytes"
	"testing"
)

// FuzzCheck runs Check on arbitrary bytes: it must never panic, and a report
// must be self-consistent. The seeds in testdata/fuzz/FuzzCheck are small
// images made with qemu-img (512-byte clusters), clean and damaged.
func FuzzCheck(f *testing.F) {
	old := MaxCheckWork
	MaxCheckWork = 1 << 22 // keep each input fast
	defer func() { MaxCheckWork = old }()
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := Check(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if rep != nil {
				t.Fatalf("Check returned both a report and %v", err)
			}
			return
		}
		if rep.Corruptions < 0 || rep.Leaks < 0 || rep.CheckErrors < 0 ||
			rep.AllocatedClusters < 0 || rep.FragmentedClusters > rep.AllocatedClusters ||
			rep.CompressedClusters > rep.AllocatedClusters || rep.ImageEndOffset <= 0 {
			t.Fatalf("inconsistent report %+v", rep)
		}
		if len(rep.Messages) > MaxCheckMessages {
			t.Fatalf("%d messages, more than %d", len(rep.Messages), MaxCheckMessages)
		}
		if n := int64(len(rep.Messages)) + rep.MessagesOmitted; n < rep.Corruptions+rep.Leaks+rep.CheckErrors {
			t.Fatalf("%d messages for %d corruptions, %d leaks, %d check errors", n, rep.Corruptions, rep.Leaks, rep.CheckErrors)
		}
	})
}
