package qcow2

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"

	"instarfs/errcode"
	"instarfs/vmm/worker/internal/zstd"
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
	zstd *zstd.Decoder // made on first use: its tables take 11 KiB
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
		d.zstd = new(zstd.Decoder)
	}
	for len(dst) > 0 {
		if len(in) == 0 {
			return fmt.Errorf("the compressed data ends with %d bytes of the cluster still to fill", len(dst))
		}
		got, used, err := d.zstd.Decode(dst, in)
		if errors.Is(err, zstd.ErrTooLong) {
			return errors.New("a zstd frame decompresses past the end of the cluster")
		}
		if err != nil {
			return fmt.Errorf("%w with %d bytes of the cluster still to fill", err, len(dst))
		}
		in, dst = in[used:], dst[got:]
	}
	return nil
}
