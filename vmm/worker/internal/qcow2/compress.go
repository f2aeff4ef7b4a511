package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"instarfs/errcode"
)

// compressedCache keeps the last decompressed cluster, so that small
// sequential reads inside one compressed cluster decompress it once.
type compressedCache struct {
	valid bool
	raw   uint64 // the L2 entry the data came from
	data  []byte
}

// decompressor holds reusable decoder state. It is used under Image.mu.
type decompressor struct {
	in   []byte
	src  bytes.Reader
	zlib io.ReadCloser
	zstd *zstd.Decoder
}

// decompressLocked returns the decompressed cluster for compressed entry e.
// The result is owned by the cache: valid until the next call. img.mu must be
// held.
func (img *Image) decompressLocked(e L2Entry, goff int64) ([]byte, error) {
	c := &img.zcache
	if c.valid && c.raw == e.Raw {
		return c.data, nil
	}
	if err := img.checkCompressed(e, goff); err != nil {
		return nil, err
	}
	cs := int(img.h.ClusterSize())
	if c.data == nil {
		c.data = make([]byte, cs)
	}
	c.valid = false

	// The descriptor's last sector may extend past the end of the file when
	// the image was not padded (qemu-io write -c); decompression stops once a
	// whole cluster has been produced, so the missing tail is never needed.
	n := min(e.CompressedSize, img.fileSize-e.HostOffset)
	d := &img.decoder
	if int64(cap(d.in)) < n {
		d.in = make([]byte, n)
	}
	in := d.in[:n]
	if err := readFull(img.r, in, e.HostOffset); err != nil {
		return nil, err
	}
	d.src.Reset(in)
	var err error
	switch img.h.CompressionType {
	case CompressionZlib:
		err = d.inflate(c.data)
	case CompressionZstd:
		err = d.unzstd(in, c.data)
	default:
		err = errcode.New(errcode.Qcow2BadHeader, "qcow2: unknown compression type %d", img.h.CompressionType)
	}
	if err != nil {
		return nil, errcode.New(errcode.Qcow2BadCompressed, "qcow2: compressed cluster for guest offset %#x (%d bytes at host offset %#x): %v", goff, n, e.HostOffset, err)
	}
	c.valid, c.raw = true, e.Raw
	return c.data, nil
}

// inflate decodes raw deflate data (what qemu writes: zlib with window bits
// -12, no zlib header) until dst is full.
func (d *decompressor) inflate(dst []byte) error {
	if d.zlib == nil {
		d.zlib = flate.NewReader(&d.src)
	} else if err := d.zlib.(flate.Resetter).Reset(&d.src, nil); err != nil {
		return err
	}
	_, err := io.ReadFull(d.zlib, dst)
	return err
}

// unzstd decodes the zstd frames in in until dst is full, as qemu's
// qcow2_zstd_decompress does: a cluster may be stored as several frames, each
// decoded whole; the frame that fills dst must end exactly there, and input
// that ends before dst is full is an error. qemu fails such a cluster with
// EIO; only what follows the frame that filled dst (the rest of the
// descriptor's last sector, often the next cluster's data) is ignored.
func (d *decompressor) unzstd(in, dst []byte) error {
	if d.zstd == nil {
		z, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(8<<20),
			zstd.WithDecoderMaxMemory(64<<20))
		if err != nil {
			return err
		}
		d.zstd = z
	}
	for len(dst) > 0 {
		n, skippable, err := zstdFrameLen(in)
		if err != nil {
			return fmt.Errorf("%w with %d bytes of the cluster still to fill", err, len(dst))
		}
		frame := in[:n]
		in = in[n:]
		if skippable {
			continue
		}
		d.src.Reset(frame)
		if err := d.zstd.Reset(&d.src); err != nil {
			return err
		}
		got, err := io.ReadFull(d.zstd, dst)
		switch {
		case err == nil:
			// dst is full: the frame must end here.
			var one [1]byte
			if m, err := d.zstd.Read(one[:]); m > 0 {
				return errors.New("a zstd frame decompresses past the end of the cluster")
			} else if err != io.EOF {
				return err
			}
		case err != io.EOF && err != io.ErrUnexpectedEOF:
			return err
		}
		dst = dst[got:]
	}
	return nil
}

// Frame layout of RFC 8878, which zstdFrameLen walks without decoding.
const (
	zstdMagic          = 0xfd2fb528
	zstdSkippableMagic = 0x184d2a50 // the low 4 bits are free
	zstdSkippableMask  = 0xfffffff0
)

var errZstdTruncated = errors.New("the compressed data ends inside a zstd frame")

// zstdFrameLen returns the length of the zstd frame at the start of in
// (header, blocks and checksum), and whether it is a skippable frame, which
// qemu's decoder passes over too. It checks only what it needs to find the
// frame's end; the decoder checks the rest.
func zstdFrameLen(in []byte) (n int, skippable bool, err error) {
	if len(in) < 4 {
		return 0, false, errZstdTruncated
	}
	magic := binary.LittleEndian.Uint32(in)
	if magic&zstdSkippableMask == zstdSkippableMagic {
		if len(in) < 8 {
			return 0, false, errZstdTruncated
		}
		n := 8 + int64(binary.LittleEndian.Uint32(in[4:]))
		if n > int64(len(in)) {
			return 0, false, errZstdTruncated
		}
		return int(n), true, nil
	}
	if magic != zstdMagic {
		return 0, false, fmt.Errorf("no zstd frame (magic %#08x)", magic)
	}
	if len(in) < 5 {
		return 0, false, errZstdTruncated
	}
	fhd := in[4]
	if fhd&0x08 != 0 {
		return 0, false, errors.New("a zstd frame header sets its reserved bit")
	}
	single := fhd&0x20 != 0
	pos := 5
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary id
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	pos += fcs
	for {
		if pos+3 > len(in) {
			return 0, false, errZstdTruncated
		}
		bh := int(in[pos]) | int(in[pos+1])<<8 | int(in[pos+2])<<16
		pos += 3
		switch size := bh >> 3; bh >> 1 & 3 {
		case 0, 2: // raw, compressed
			pos += size
		case 1: // RLE: one byte
			pos++
		default:
			return 0, false, errors.New("a zstd block has the reserved type")
		}
		if pos > len(in) {
			return 0, false, errZstdTruncated
		}
		if bh&1 != 0 {
			break
		}
	}
	if fhd&0x04 != 0 {
		pos += 4 // content checksum
	}
	if pos > len(in) {
		return 0, false, errZstdTruncated
	}
	return pos, false, nil
}
