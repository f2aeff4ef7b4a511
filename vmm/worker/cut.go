package worker

import (
	"instarfs/proto"
	"instarfs/vmm/worker/internal/qcow2"
)

// lastCut returns what shortens f, image i of the request, for the last time
// in a run: the host when it offers to (proto.Cut), while this worker
// finishes and exits; f itself otherwise.
func (s *session) lastCut(i int, f ImageFile) qcow2.EmptyFile {
	if !s.req.HostCuts {
		return f
	}
	return hostCut{ImageFile: f, s: s, image: i}
}

// hostCut is an image whose Cut the host applies. The host only shortens
// (proto.Cut): a cut that lengthens the image, which emptying a small qcow2
// image can be, the worker makes itself.
type hostCut struct {
	ImageFile
	s     *session
	image int
}

func (h hostCut) Cut(size int64) error {
	if st, err := h.Stat(); err != nil || size > st.Size() {
		return h.ImageFile.Cut(size)
	}
	faults.before()
	h.s.out.line(proto.Message{Cut: &proto.Cut{Image: h.image, Length: size}})
	h.s.out.flush()
	return nil
}
