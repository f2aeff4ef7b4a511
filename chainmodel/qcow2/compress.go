package qcow2

import (
	"bytes"
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
		err = d.unzstd(c.data)
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

// unzstd decodes a zstd stream until dst is full.
func (d *decompressor) unzstd(dst []byte) error {
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
	if err := d.zstd.Reset(&d.src); err != nil {
		return err
	}
	_, err := io.ReadFull(d.zstd, dst)
	return err
}
