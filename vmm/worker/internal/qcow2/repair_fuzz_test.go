package qcow2

import (
	"bytes"
	"testing"

	"instarfs/errcode"
)

// memRepairFile is a memFile that Repair can also extend and punch.
type memRepairFile struct{ memFile }

func (m *memRepairFile) Truncate(size int64) error {
	if size < 0 || size > memFileMax {
		return errcode.New(errcode.WriteFailed, "truncate past the test bound")
	}
	if size > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, size-int64(len(m.b)))...)
	}
	m.b = m.b[:size]
	return nil
}

func (m *memRepairFile) PunchHole(off, n int64) error {
	if off < 0 || n < 0 {
		return errcode.New(errcode.WriteFailed, "bad hole")
	}
	end := min(off+n, int64(len(m.b)))
	if off < end {
		clear(m.b[off:end])
	}
	return nil
}

// FuzzRepair runs check -r all on arbitrary images (the seeds of FuzzCheck):
// it must never panic, every error must carry a named code, and the report
// it ends with must be what a fresh Check of the repaired bytes says.
func FuzzRepair(f *testing.F) {
	fuzzSeeds(f, "FuzzCheck")
	old := MaxCheckWork
	MaxCheckWork = 1 << 22
	defer func() { MaxCheckWork = old }()
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &memRepairFile{memFile{b: bytes.Clone(data)}}
		rep, err := Repair(m, int64(len(m.b)), RepairAll)
		if err != nil {
			if errcode.Of(err) == errcode.Internal || errcode.Of(err) == "" {
				t.Fatalf("unnamed error: %v", err)
			}
			return
		}
		if rep.NeedsRebuild {
			t.Fatal("-r all reported that it needs -r all")
		}
		final := rep.Pass
		if rep.Final != nil {
			final = rep.Final
		}
		again, err := Check(bytes.NewReader(m.b), int64(len(m.b)))
		if err != nil {
			t.Fatalf("Check after Repair: %v", err)
		}
		if again.Corruptions != final.Corruptions || again.Leaks != final.Leaks || again.CheckErrors != final.CheckErrors {
			t.Fatalf("Repair ends with %d corruptions, %d leaks, %d check errors; Check then finds %d, %d, %d",
				final.Corruptions, final.Leaks, final.CheckErrors, again.Corruptions, again.Leaks, again.CheckErrors)
		}
	})
}
