package qcow2

import (
	"io"
	"slices"

	"instarfs/errcode"
)

// stagedFile holds Repair's changes in memory until the whole repair has been
// worked out: reads see them, the file does not. Only a repair that ends
// without refusing anything is applied, by replaying the changes in their
// order (syncs included), so a refused repair writes nothing and an applied
// one keeps its crash-safe ordering.
type stagedFile struct {
	f        RepairFile
	baseSize int64 // the file's real size
	size     int64 // the size as staged
	pages    map[int64][]byte
	ops      []stagedOp
}

const stagePage = 4096

type stagedOpKind uint8

const (
	opWrite stagedOpKind = iota
	opPunch
	opTruncate
	opSync
)

type stagedOp struct {
	kind   stagedOpKind
	off, n int64
	data   []byte
}

func newStagedFile(f RepairFile, size int64) *stagedFile {
	return &stagedFile{f: f, baseSize: size, size: size, pages: map[int64][]byte{}}
}

// ReadAt reads the staged contents: staged pages, the file elsewhere, zeros
// past the file's real end.
func (s *stagedFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errcode.New(errcode.ReadFailed, "qcow2 repair: read at negative offset %d", off)
	}
	want := len(p)
	if off >= s.size {
		return 0, io.EOF
	}
	if int64(len(p)) > s.size-off {
		p = p[:s.size-off]
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		// The run of pages from pos that are not staged is read at once.
		end := pos
		for end < off+int64(len(p)) && s.pages[end/stagePage] == nil {
			end = (end/stagePage + 1) * stagePage
		}
		end = min(end, off+int64(len(p)))
		if end > pos {
			if err := s.readBase(p[done:done+int(end-pos)], pos); err != nil {
				return done, err
			}
			done += int(end - pos)
			continue
		}
		pg := s.pages[pos/stagePage]
		done += copy(p[done:], pg[pos%stagePage:])
	}
	if done < want {
		return done, io.EOF
	}
	return done, nil
}

// readBase reads the file itself; past its real end it reads zeros.
func (s *stagedFile) readBase(p []byte, off int64) error {
	n := 0
	if off < s.baseSize {
		n = int(min(int64(len(p)), s.baseSize-off))
		if err := readFull(s.f, p[:n], off); err != nil {
			return err
		}
	}
	clear(p[n:])
	return nil
}

// page returns staged page i, staging it from the file first.
func (s *stagedFile) page(i int64) ([]byte, error) {
	if pg := s.pages[i]; pg != nil {
		return pg, nil
	}
	pg := make([]byte, stagePage)
	if err := s.readBase(pg, i*stagePage); err != nil {
		return nil, err
	}
	s.pages[i] = pg
	return pg, nil
}

// stage copies p (nil: zeros) into the staged pages at off.
func (s *stagedFile) stage(p []byte, n, off int64) error {
	for done := int64(0); done < n; {
		pos := off + done
		pg, err := s.page(pos / stagePage)
		if err != nil {
			return err
		}
		dst := pg[pos%stagePage:]
		k := min(int64(len(dst)), n-done)
		if p == nil {
			clear(dst[:k])
		} else {
			copy(dst[:k], p[done:done+k])
		}
		done += k
	}
	return nil
}

func (s *stagedFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errcode.New(errcode.WriteFailed, "qcow2 repair: write at negative offset %d", off)
	}
	if err := s.stage(p, int64(len(p)), off); err != nil {
		return 0, err
	}
	s.size = max(s.size, off+int64(len(p)))
	s.ops = append(s.ops, stagedOp{kind: opWrite, off: off, data: slices.Clone(p)})
	return len(p), nil
}

func (s *stagedFile) PunchHole(off, n int64) error {
	end := min(off+n, s.size)
	if off < end {
		if err := s.stage(nil, end-off, off); err != nil {
			return err
		}
	}
	s.ops = append(s.ops, stagedOp{kind: opPunch, off: off, n: n})
	return nil
}

// Truncate only grows the file: Repair never shrinks one.
func (s *stagedFile) Truncate(size int64) error {
	if size < s.size {
		return errcode.New(errcode.Internal, "qcow2 repair: shrinking the file is not staged")
	}
	s.size = size
	s.ops = append(s.ops, stagedOp{kind: opTruncate, n: size})
	return nil
}

func (s *stagedFile) Datasync() error {
	s.ops = append(s.ops, stagedOp{kind: opSync})
	return nil
}

// apply replays the staged changes on the file, in order.
func (s *stagedFile) apply() error {
	for _, op := range s.ops {
		var err error
		switch op.kind {
		case opWrite:
			_, err = s.f.WriteAt(op.data, op.off)
		case opPunch:
			err = s.f.PunchHole(op.off, op.n)
		case opTruncate:
			err = s.f.Truncate(op.n)
		case opSync:
			err = s.f.Datasync()
		}
		if err != nil {
			return errcode.New(errcode.WriteFailed, "qcow2 repair: %v", err)
		}
	}
	s.ops = nil
	return nil
}
