package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"instarfs/errcode"
	"instarfs/internal/qemutest"
)

// TestZstdFramesAgainstQemu replaces a zstd-compressed cluster with crafted
// frames and reads it with qemu-img convert and with Image: both must fail, or
// both must read the same bytes. A frame that decompresses past its cluster
// is the case qemu fails with EIO and instarfs used to cut short silently.
func TestZstdFramesAgainstQemu(t *testing.T) {
	qemutest.NeedQemu(t)
	const cs = 64 << 10
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	frame := func(b byte, n int) []byte { return enc.EncodeAll(bytes.Repeat([]byte{b}, n), nil) }
	skippable := binary.LittleEndian.AppendUint32(nil, 0x184d2a53)
	skippable = append(binary.LittleEndian.AppendUint32(skippable, 5), "hello"...)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		data []byte
		want []byte // nil: both must fail
	}{
		{"one frame", frame(0x22, cs), bytes.Repeat([]byte{0x22}, cs)},
		{"one frame, then other bytes", cat(frame(0x22, cs), []byte("not a frame")), bytes.Repeat([]byte{0x22}, cs)},
		{"two frames", cat(frame(0x22, cs/2), frame(0x33, cs/2)), cat(bytes.Repeat([]byte{0x22}, cs/2), bytes.Repeat([]byte{0x33}, cs/2))},
		{"a skippable frame first", cat(skippable, frame(0x22, cs)), bytes.Repeat([]byte{0x22}, cs)},
		{"a frame past the cluster", frame(0x22, cs+1), nil},
		{"a frame far past the cluster", frame(0x22, 4*cs), nil},
		{"the second frame past the cluster", cat(frame(0x22, cs/2), frame(0x33, cs/2+1)), nil},
		{"a frame short of the cluster", frame(0x22, cs/2), nil},
		{"a truncated frame", frame(0x22, cs)[:6], nil},
		// One RLE block of the whole cluster in a frame with a 1 KiB window:
		// past the window it is refused when the frame does not say its
		// size, and decoded when it does.
		{"a block past the window, size unsaid", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00, 0x03, 0x00, 0x08, 'r'}, nil},
		{"a block past the window, size said", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x40, 0x00, 0x00, 0xff, 0x03, 0x00, 0x08, 'r'}, bytes.Repeat([]byte{'r'}, cs)},
	}
	dir := t.TempDir()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "z"+string(rune('a'+i))+".qcow2")
			qemutest.Create(t, path, "qcow2", "1M", "compression_type=zstd")
			qemutest.IO(t, path, "qcow2", "write -c -P 0x11 0 64k")
			// qemu-io leaves the file ending where the compressed data ends;
			// pad it so that the descriptor's sectors lie inside the file.
			if fi, err := os.Stat(path); err != nil {
				t.Fatal(err)
			} else if err := os.Truncate(path, fi.Size()+cs); err != nil {
				t.Fatal(err)
			}
			img := openPath(t, path)
			l2, err := img.ReadL2Table(int64(img.L1()[0] & L1OffsetMask))
			if err != nil {
				t.Fatal(err)
			}
			e := l2.Entry(0)
			if e.Type != ClusterCompressed {
				t.Fatalf("cluster 0 is %v, not compressed", e.Type)
			}
			area := min(e.CompressedSize, img.FileSize()-e.HostOffset)
			if int64(len(tt.data)) > area {
				t.Fatalf("%d bytes of frames do not fit in the %d bytes of the compressed cluster", len(tt.data), area)
			}
			patchFile(t, path, e.HostOffset, append(tt.data, make([]byte, area-int64(len(tt.data)))...))

			out := filepath.Join(dir, "out.raw")
			q := qemutest.Run(t, "", "convert", "-f", "qcow2", "-O", "raw", path, out)
			qout := append(q.Stdout, q.Stderr...)
			got := make([]byte, cs)
			_, err = openPath(t, path).ReadAt(got, 0)

			if tt.want == nil {
				if q.Code == 0 {
					t.Errorf("qemu-img read the cluster; the test expects it to fail")
				}
				if errcode.Of(err) != errcode.Qcow2BadCompressed {
					t.Errorf("ReadAt: %v, want %s (qemu-img: %s)", err, errcode.Qcow2BadCompressed, bytes.TrimSpace(qout))
				}
				return
			}
			if q.Code != 0 {
				t.Fatalf("qemu-img convert: exit %d\n%s", q.Code, qout)
			}
			theirs, err2 := os.ReadFile(out)
			if err2 != nil {
				t.Fatal(err2)
			}
			if err != nil {
				t.Fatalf("ReadAt: %v; qemu-img reads the cluster", err)
			}
			if !bytes.Equal(theirs[:cs], tt.want) || !bytes.Equal(got, tt.want) {
				t.Errorf("qemu-img read %x…, instarfs %x…, want %x…", theirs[:8], got[:8], tt.want[:8])
			}
		})
	}
}
