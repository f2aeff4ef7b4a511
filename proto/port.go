package proto

import (
	"encoding/binary"
	"fmt"
	"io"
)

// WritePortFrame writes one frame of a microvm broker port (see PortQuestion).
func WritePortFrame(w io.Writer, kind byte, body []byte) error {
	frame := make([]byte, 5, 5+len(body))
	frame[0] = kind
	binary.BigEndian.PutUint32(frame[1:], uint32(len(body)))
	_, err := w.Write(append(frame, body...))
	return err
}

// ReadPortFrame reads one frame of a microvm broker port whose body is at
// most max bytes.
func ReadPortFrame(r io.Reader, max int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(max) {
		return 0, nil, fmt.Errorf("a frame of %d bytes, more than %d", n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}
