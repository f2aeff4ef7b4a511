package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	endian "encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"instarfs/internal/qemutest"
)

// This file runs every read command on crafted images: qcow2 and vmdk files
// made by qemu-img and qemu-io, then patched byte by byte into the shapes a
// hostile image takes (tables beyond the end of the file or on top of each
// other, sizes near 2^63, absurd lengths and counts). Whatever the image,
// instarfs must answer within a bounded time, either with a result or with a
// named error code that is not an internal failure, must leave the image
// untouched, and must never print a Go panic.

// hostileCommand is one command run on every crafted image. The list grows
// with the operations: args returns the command line for the image file.
type hostileCommand struct {
	name string
	args func(image string) []string
}

var hostileCommands = []hostileCommand{
	{"info", func(img string) []string { return []string{"info", "--output=json", img} }},
	{"info-chain", func(img string) []string { return []string{"info", "--backing-chain", "--output=json", img} }},
	{"info-human", func(img string) []string { return []string{"info", img} }},
	{"map", func(img string) []string { return []string{"map", "--output=json", img} }},
	{"map-human", func(img string) []string { return []string{"map", img} }},
	{"check", func(img string) []string { return []string{"check", "--output=json", img} }},
}

var hostileKeep = flag.String("hostile.keep", "", "copy each crafted image directory of TestHostileImages into this directory, for debugging")

// Bounds every hostile run must keep. The time bound is on CPU time (of the
// CLI and its worker together), which does not depend on how busy the machine
// is; the wall-clock timeout only catches a hang.
const (
	hostileMaxCPU  = 10 * time.Second
	hostileTimeout = 60 * time.Second
	hostileMaxRSS  = 512 << 20 // bytes, of the CLI or its worker
)

// badCodes are the codes that mean instarfs itself failed, not the image:
// none may answer a crafted image. WORKER_PROTOCOL is among them because our
// own worker is honest; if the host refuses its answer, the worker let
// something through that it should have refused with a named error.
var badCodes = []string{"INTERNAL", "WORKER_CRASHED", "WORKER_PROTOCOL", "WORKER_TIMEOUT",
	"SANDBOX_VIOLATION", "SANDBOX_UNAVAILABLE", "CANCELLED"}

// hostileCase is one crafted image: a copy of a base image with patch applied
// to its file named target (the image itself unless set).
type hostileCase struct {
	name   string
	base   string // a key of hostileBases
	target string // file of the base directory to patch; "" for the image
	patch  func(p *patcher)
	// want, when set, is the code every failing command must name. Commands
	// that look deeper than the probe (map, check) may still succeed.
	want string
	// refused says that even info must fail.
	refused bool
	// known names the commands that do not yet keep the bounds on this
	// image, each with the reason; they are skipped, not run.
	known map[string]string
}

// hostileBase is a directory of images built by qemu-img and qemu-io; image is
// the file the commands run on.
type hostileBase struct {
	image string
	build []string // shell commands run in the directory
}

var hostileBases = map[string]hostileBase{
	// A qcow2 with data clusters at 0 and 2M, a compressed cluster at 1M and a
	// zero cluster at 3M: header 0, refcount table 0x10000, refcount block
	// 0x20000, L1 0x30000, L2 0x40000.
	"qcow2": {"img.qcow2", []string{
		"qemu-img create -q -f qcow2 img.qcow2 4M",
		"qemu-io -c 'write -P 0x11 0 64k' -c 'write -c -P 0x33 1M 64k' -c 'write -P 0x22 2M 64k' -c 'write -z 3M 64k' img.qcow2",
	}},
	// The same with an internal snapshot.
	"qcow2-snap": {"img.qcow2", []string{
		"qemu-img create -q -f qcow2 img.qcow2 4M",
		"qemu-io -c 'write -P 0x11 0 64k' img.qcow2",
		"qemu-img snapshot -c snap1 img.qcow2",
		"qemu-io -c 'write -P 0x44 0 64k' img.qcow2",
	}},
	// Extended L2 entries, a partly written cluster.
	"qcow2-xl2": {"img.qcow2", []string{
		"qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 4M",
		"qemu-io -c 'write -P 0x11 4k 8k' -c 'write -z 64k 64k' img.qcow2",
	}},
	// An overlay and its backing file.
	"qcow2-chain": {"top.qcow2", []string{
		"qemu-img create -q -f qcow2 base.qcow2 4M",
		"qemu-io -c 'write -P 0x11 0 64k' base.qcow2",
		"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
		"qemu-io -c 'write -P 0x22 64k 64k' top.qcow2",
	}},
	// A monolithicSparse vmdk with grains at 0 and 2M.
	"vmdk": {"img.vmdk", []string{
		"qemu-img create -q -f vmdk img.vmdk 4M",
		"qemu-io -f vmdk -c 'write -P 0x11 0 64k' -c 'write -P 0x22 2M 64k' img.vmdk",
	}},
	// A streamOptimized vmdk (compressed grains with markers).
	"vmdk-stream": {"img.vmdk", []string{
		"qemu-img create -q -f vmdk src.vmdk 4M",
		"qemu-io -f vmdk -c 'write -P 0x11 0 64k' -c 'write -P 0x22 2M 64k' src.vmdk",
		"qemu-img convert -O vmdk -o subformat=streamOptimized src.vmdk img.vmdk",
		"rm src.vmdk",
	}},
}

// Known gaps, skipped until fixed. The vmdk check looks at every grain of a
// grain table each time a directory entry names it, so a small file whose
// directory entries all name one mixed table costs time in proportion to the
// virtual size. The worker's timeout (10 minutes by default) ends it.
func hostileCases() []hostileCase {
	const copied = uint64(1) << 63
	big := func(p *patcher) uint64 { return uint64(p.size()+(1<<30)) &^ 0xffff }
	return []hostileCase{
		// qcow2: the header.
		{name: "qcow2/cluster-bits-8", base: "qcow2", patch: func(p *patcher) { p.be32(20, 8) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/cluster-bits-22", base: "qcow2", patch: func(p *patcher) { p.be32(20, 22) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/cluster-bits-63", base: "qcow2", patch: func(p *patcher) { p.be32(20, 63) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/header-length-max", base: "qcow2", patch: func(p *patcher) { p.be32(100, 0xffffffff) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/header-length-past-cluster", base: "qcow2", patch: func(p *patcher) { p.be32(100, 0x10008) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/header-length-cluster", base: "qcow2", patch: func(p *patcher) { p.be32(100, 0x10000) }},
		{name: "qcow2/extension-length-max", base: "qcow2", patch: func(p *patcher) { p.be32(0x74, 0xffffffff) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/extension-past-cluster", base: "qcow2", patch: func(p *patcher) { p.be32(0x74, 0xfff8) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/extension-fills-cluster", base: "qcow2", patch: func(p *patcher) {
			// 8190 empty extensions of an unknown type, no end marker.
			b := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0}, (0x10000-0x70)/8)
			p.write(0x70, b)
		}},
		{name: "qcow2/refcount-order-7", base: "qcow2", patch: func(p *patcher) { p.be32(96, 7) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/unknown-incompatible-bits", base: "qcow2", patch: func(p *patcher) { p.be64(72, 0xffffffffffffffe0) }, want: "QCOW2_UNKNOWN_FEATURE", refused: true},
		{name: "qcow2/version-99", base: "qcow2", patch: func(p *patcher) { p.be32(4, 99) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/truncated-header", base: "qcow2", patch: func(p *patcher) { p.truncate(100) }, refused: true},
		{name: "qcow2/truncated-after-header", base: "qcow2", patch: func(p *patcher) { p.truncate(0x10000) }, refused: true},
		{name: "qcow2/truncated-in-l2", base: "qcow2", patch: func(p *patcher) { p.truncate(0x40100) }},

		// qcow2: virtual sizes and L1 sizes.
		{name: "qcow2/size-2^63", base: "qcow2", patch: func(p *patcher) { p.be64(24, 1<<63) }, want: "IMAGE_TOO_LARGE", refused: true},
		{name: "qcow2/size-2^63-512", base: "qcow2", patch: func(p *patcher) { p.be64(24, 1<<63-512) }, want: "IMAGE_TOO_LARGE", refused: true},
		{name: "qcow2/size-max", base: "qcow2", patch: func(p *patcher) { p.be64(24, ^uint64(0)) }, want: "IMAGE_TOO_LARGE", refused: true},
		{name: "qcow2/size-l1-too-small", base: "qcow2", patch: func(p *patcher) { p.be64(24, 1<<40) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/l1-size-max", base: "qcow2", patch: func(p *patcher) { p.be32(36, 0xffffffff) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/l1-size-2^31", base: "qcow2", patch: func(p *patcher) { p.be32(36, 1<<31) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/l1-size-past-eof", base: "qcow2", patch: func(p *patcher) { p.be32(36, 1<<20) }, want: "QCOW2_CORRUPT", refused: true},
		{name: "qcow2/size-2PiB-l1-4M", base: "qcow2", patch: func(p *patcher) {
			// The largest L1 table qemu allows, mapping 2 PiB, all but its
			// first entry empty: a sparse file.
			p.moveL1(4<<20, nil)
			p.be64(24, 1<<51)
		}},
		{name: "qcow2/l1-4M-entries-one-l2", base: "qcow2", patch: func(p *patcher) {
			// Every entry of the largest L1 table names the same L2 table.
			e := uint64(p.l2Offset()) | copied
			p.moveL1(4<<20, func(i int) uint64 { return e })
		}},

		{name: "qcow2/size-2PiB-l1-4M-entries-one-l2", base: "qcow2", patch: func(p *patcher) {
			// 2 PiB of guest data from one 64 KiB L2 table: a map of 16M
			// rows, more than a worker may answer.
			e := uint64(p.l2Offset()) | copied
			p.moveL1(4<<20, func(i int) uint64 { return e })
			p.be64(24, 1<<51)
		}},
		{name: "qcow2/size-2PiB-l1-4M-entries-one-empty-l2", base: "qcow2", patch: func(p *patcher) {
			// 2 PiB mapped by one empty L2 table: one row, 2^35 L2
			// entries to look at.
			cs := int64(0x10000)
			l2 := (p.size() + cs - 1) &^ (cs - 1)
			p.extend(l2 + cs)
			p.moveL1(4<<20, func(i int) uint64 { return uint64(l2) | copied })
			p.be64(24, 1<<51)
		}},

		// qcow2: L1, L2 and refcount tables in the wrong places.
		{name: "qcow2/l1-beyond-eof", base: "qcow2", patch: func(p *patcher) { p.be64(40, big(p)) }, want: "QCOW2_CORRUPT", refused: true},
		{name: "qcow2/l1-max-offset", base: "qcow2", patch: func(p *patcher) { p.be64(40, 0xffffffffffff0000) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/l1-at-header", base: "qcow2", patch: func(p *patcher) { p.be64(40, 0) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/l1-is-refcount-table", base: "qcow2", patch: func(p *patcher) { p.be64(40, p.be64At(48)) }},
		{name: "qcow2/l1-unaligned", base: "qcow2", patch: func(p *patcher) { p.be64(40, p.be64At(40)+8) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/l2-beyond-eof", base: "qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), big(p)|copied) }},
		{name: "qcow2/l2-max-offset", base: "qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), 0x00ffffffffff0000|copied) }},
		{name: "qcow2/l2-unaligned", base: "qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), uint64(p.l2Offset()+0x200)|copied) }},
		{name: "qcow2/l2-is-l1", base: "qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), uint64(p.l1Offset())|copied) }},
		{name: "qcow2/l2-is-refcount-table", base: "qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), p.be64At(48)|copied) }},
		{name: "qcow2/l2-is-refcount-block", base: "qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), p.refblockOffset()|copied) }},
		{name: "qcow2/l1-reserved-bits", base: "qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), p.be64At(p.l1Offset())|0x7f000000000001ff) }},
		{name: "qcow2/refcount-table-beyond-eof", base: "qcow2", patch: func(p *patcher) { p.be64(48, big(p)) }, want: "QCOW2_CORRUPT", refused: true},
		{name: "qcow2/refcount-table-at-header", base: "qcow2", patch: func(p *patcher) { p.be64(48, 0) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/refcount-table-is-l1", base: "qcow2", patch: func(p *patcher) { p.be64(48, uint64(p.l1Offset())) }},
		{name: "qcow2/refcount-table-clusters-max", base: "qcow2", patch: func(p *patcher) { p.be32(56, 0xffffffff) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/refcount-table-clusters-past-eof", base: "qcow2", patch: func(p *patcher) { p.be32(56, 128) }, want: "QCOW2_CORRUPT", refused: true},
		{name: "qcow2/refcount-table-loop", base: "qcow2", patch: func(p *patcher) {
			// The refcount table names itself as its refcount block.
			rt := p.be64At(48)
			p.be64(int64(rt), rt)
		}},
		{name: "qcow2/refcount-table-all-one-block", base: "qcow2", patch: func(p *patcher) {
			rt := int64(p.be64At(48))
			rb := p.refblockOffset()
			for i := int64(0); i < 0x10000/8; i++ {
				p.be64(rt+8*i, rb)
			}
		}},
		{name: "qcow2/refcount-block-is-header", base: "qcow2", patch: func(p *patcher) { p.be64(int64(p.be64At(48)), 0x200) }},
		{name: "qcow2/refcount-block-beyond-eof", base: "qcow2", patch: func(p *patcher) { p.be64(int64(p.be64At(48)), big(p)) }},
		{name: "qcow2/refcount-block-reserved-bits", base: "qcow2", patch: func(p *patcher) { p.be64(int64(p.be64At(48)), p.refblockOffset()|0x1ff) }},

		// qcow2: L2 entries.
		{name: "qcow2/l2-reserved-bits", base: "qcow2", patch: func(p *patcher) {
			p.be64(p.l2Offset(), p.be64At(p.l2Offset())|0x3f000000000001fe)
		}},
		{name: "qcow2/l2-data-beyond-eof", base: "qcow2", patch: func(p *patcher) { p.be64(p.l2Offset(), big(p)|copied) }},
		{name: "qcow2/l2-data-unaligned", base: "qcow2", patch: func(p *patcher) { p.be64(p.l2Offset(), p.be64At(p.l2Offset())+0x200) }},
		{name: "qcow2/l2-data-is-l1", base: "qcow2", patch: func(p *patcher) { p.be64(p.l2Offset()+8*5, uint64(p.l1Offset())|copied) }},
		{name: "qcow2/l2-data-is-refcount-table", base: "qcow2", patch: func(p *patcher) { p.be64(p.l2Offset()+8*5, p.be64At(48)) }},
		{name: "qcow2/l2-all-entries-one-cluster", base: "qcow2", patch: func(p *patcher) {
			e := p.be64At(p.l2Offset())
			for i := int64(0); i < 0x10000/8; i++ {
				p.be64(p.l2Offset()+8*i, e)
			}
		}},
		{name: "qcow2/compressed-beyond-eof", base: "qcow2", patch: func(p *patcher) {
			// 62-(16-8) = 54 offset bits; the sector count above them.
			p.be64(p.l2Offset()+8*16, 1<<62|big(p))
		}},
		{name: "qcow2/compressed-max", base: "qcow2", patch: func(p *patcher) { p.be64(p.l2Offset()+8*16, 1<<62|(1<<62-1)) }},
		{name: "qcow2/compressed-at-header", base: "qcow2", patch: func(p *patcher) { p.be64(p.l2Offset()+8*16, 1<<62|0xff<<54) }},
		{name: "qcow2/compressed-at-eof", base: "qcow2", patch: func(p *patcher) { p.be64(p.l2Offset()+8*16, 1<<62|0xff<<54|uint64(p.size()-1)) }},
		{name: "qcow2/compressed-garbage", base: "qcow2", patch: func(p *patcher) {
			// Point the compressed descriptor at the L1 table.
			p.be64(p.l2Offset()+8*16, 1<<62|0xff<<54|uint64(p.l1Offset()))
		}},

		// qcow2: extended L2 entries.
		{name: "qcow2-xl2/alloc-and-zero", base: "qcow2-xl2", patch: func(p *patcher) { p.be64(p.l2Offset()+8, 0xffffffffffffffff) }},
		{name: "qcow2-xl2/unallocated-with-alloc-bits", base: "qcow2-xl2", patch: func(p *patcher) {
			p.be64(p.l2Offset()+16*5, 0)
			p.be64(p.l2Offset()+16*5+8, 0x00000000ffffffff)
		}},
		{name: "qcow2-xl2/compressed-with-bitmap", base: "qcow2-xl2", patch: func(p *patcher) {
			p.be64(p.l2Offset()+16*5, 1<<62|uint64(p.l1Offset()))
			p.be64(p.l2Offset()+16*5+8, 0xdeadbeef)
		}},
		{name: "qcow2-xl2/reserved-bit-0", base: "qcow2-xl2", patch: func(p *patcher) { p.be64(p.l2Offset(), p.be64At(p.l2Offset())|1) }},
		{name: "qcow2-xl2/cluster-bits-13", base: "qcow2-xl2", patch: func(p *patcher) { p.be32(20, 13) }, refused: true},

		// qcow2: snapshots.
		{name: "qcow2/snapshots-max", base: "qcow2", patch: func(p *patcher) { p.be32(60, 0xffffffff); p.be64(64, 0x10000) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2/snapshots-65536-past-eof", base: "qcow2", patch: func(p *patcher) { p.be32(60, 65536); p.be64(64, 0x10000) }, want: "QCOW2_CORRUPT", refused: true},
		{name: "qcow2/snapshots-beyond-eof", base: "qcow2", patch: func(p *patcher) { p.be32(60, 1); p.be64(64, big(p)) }, want: "QCOW2_CORRUPT", refused: true},
		{name: "qcow2/snapshots-at-header", base: "qcow2", patch: func(p *patcher) { p.be32(60, 1); p.be64(64, 0) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2-snap/count-65536", base: "qcow2-snap", patch: func(p *patcher) {
			// The table is long enough on paper; entries run off its end.
			p.be32(60, 65536)
			p.extend(int64(p.be64At(64)) + 65536*40)
		}},
		{name: "qcow2-snap/name-lengths-max", base: "qcow2-snap", patch: func(p *patcher) {
			s := int64(p.be64At(64))
			p.be16(s+12, 0xffff)
			p.be16(s+14, 0xffff)
		}},
		{name: "qcow2-snap/extra-data-max", base: "qcow2-snap", patch: func(p *patcher) { p.be32(int64(p.be64At(64))+36, 0xffffffff) }},
		{name: "qcow2-snap/l1-size-max", base: "qcow2-snap", patch: func(p *patcher) { p.be32(int64(p.be64At(64))+8, 0xffffffff) }},
		{name: "qcow2-snap/l1-beyond-eof", base: "qcow2-snap", patch: func(p *patcher) { p.be64(int64(p.be64At(64)), big(p)) }},
		{name: "qcow2-snap/l1-is-active-l1", base: "qcow2-snap", patch: func(p *patcher) {
			s := int64(p.be64At(64))
			p.be64(s, p.be64At(40))
			p.be32(s+8, p.be32At(36))
		}},
		{name: "qcow2-snap/many-sharing-l1", base: "qcow2-snap", patch: func(p *patcher) {
			// 65536 snapshots, all of them the same entry, naming the
			// active L1 table.
			s := int64(p.be64At(64))
			entry := p.read(s, 40+16)
			endian.BigEndian.PutUint64(entry[0:], p.be64At(40))
			endian.BigEndian.PutUint32(entry[8:], p.be32At(36))
			endian.BigEndian.PutUint16(entry[12:], 0)
			endian.BigEndian.PutUint16(entry[14:], 0)
			endian.BigEndian.PutUint32(entry[36:], 16)
			at := (p.size() + 0xffff) &^ 0xffff
			p.write(at, bytes.Repeat(entry, 65536))
			p.be64(64, uint64(at))
			p.be32(60, 65536)
		}},

		// qcow2: backing files.
		{name: "qcow2-chain/backing-name-1024", base: "qcow2-chain", patch: func(p *patcher) {
			p.write(0x1000, bytes.Repeat([]byte("a"), 1024))
			p.be64(8, 0x1000)
			p.be32(16, 1024)
		}, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2-chain/backing-name-1023", base: "qcow2-chain", patch: func(p *patcher) {
			p.write(0x1000, bytes.Repeat([]byte("a"), 1023))
			p.be64(8, 0x1000)
			p.be32(16, 1023)
		}},
		{name: "qcow2-chain/backing-offset-past-cluster", base: "qcow2-chain", patch: func(p *patcher) { p.be64(8, 0x10001) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2-chain/backing-offset-max", base: "qcow2-chain", patch: func(p *patcher) { p.be64(8, ^uint64(0)) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2-chain/backing-name-past-cluster", base: "qcow2-chain", patch: func(p *patcher) {
			p.be64(8, 0xfff0)
			p.be32(16, 0x100)
		}, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2-chain/backing-size-max", base: "qcow2-chain", patch: func(p *patcher) { p.be32(16, 0xffffffff) }, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2-chain/backing-name-nul", base: "qcow2-chain", patch: func(p *patcher) {
			off := int64(p.be64At(8))
			p.write(off, []byte("base\x00qcow2"))
			p.be32(16, 10)
		}},
		{name: "qcow2-chain/backing-name-control-chars", base: "qcow2-chain", patch: func(p *patcher) {
			off := int64(p.be64At(8))
			p.write(off, []byte("\x1b[2J\x1b]0;x\x07\r\n"))
			p.be32(16, 11)
		}},
		{name: "qcow2-chain/backing-is-self", base: "qcow2-chain", patch: func(p *patcher) {
			off := int64(p.be64At(8))
			p.write(off, []byte("top.qcow2"))
			p.be32(16, 9)
		}},
		{name: "qcow2-chain/backing-format-16", base: "qcow2-chain", patch: func(p *patcher) {
			// The backing format extension comes first, at 0x70.
			if p.be32At(0x70) != 0xe2792aca {
				p.t.Fatalf("no backing format extension at 0x70")
			}
			p.be32(0x74, 16)
		}, want: "QCOW2_BAD_HEADER", refused: true},
		{name: "qcow2-chain/backing-format-unknown", base: "qcow2-chain", patch: func(p *patcher) { p.write(0x78, []byte("vvfat")) }},
		{name: "qcow2-chain/base-cluster-bits-63", base: "qcow2-chain", target: "base.qcow2", patch: func(p *patcher) { p.be32(20, 63) }},
		{name: "qcow2-chain/base-l1-beyond-eof", base: "qcow2-chain", target: "base.qcow2", patch: func(p *patcher) { p.be64(40, big(p)) }},
		{name: "qcow2-chain/base-l2-beyond-eof", base: "qcow2-chain", target: "base.qcow2", patch: func(p *patcher) { p.be64(p.l1Offset(), big(p)|copied) }},
		{name: "qcow2-chain/base-size-2PiB", base: "qcow2-chain", target: "base.qcow2", patch: func(p *patcher) {
			p.moveL1(4<<20, nil)
			p.be64(24, 1<<51)
		}},

		// vmdk: the sparse extent header.
		{name: "vmdk/grain-size-0", base: "vmdk", patch: func(p *patcher) { p.le64(20, 0) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/grain-size-max", base: "vmdk", patch: func(p *patcher) { p.le64(20, ^uint64(0)) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/grain-size-1-sector", base: "vmdk", patch: func(p *patcher) { p.le64(20, 1) }},
		{name: "vmdk/capacity-overflow", base: "vmdk", patch: func(p *patcher) { p.le64(12, 1<<55) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/capacity-max", base: "vmdk", patch: func(p *patcher) { p.le64(12, ^uint64(0)) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/capacity-2^54-1", base: "vmdk", patch: func(p *patcher) { p.le64(12, 1<<54-1) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/capacity-gd-past-eof", base: "vmdk", patch: func(p *patcher) { p.le64(12, 1<<40) }, refused: true},
		{name: "vmdk/num-gtes-0", base: "vmdk", patch: func(p *patcher) { p.le32(44, 0) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/num-gtes-max", base: "vmdk", patch: func(p *patcher) { p.le32(44, 0xffffffff) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/num-gtes-1", base: "vmdk", patch: func(p *patcher) { p.le32(44, 1) }},
		{name: "vmdk/gd-at-header", base: "vmdk", patch: func(p *patcher) { p.le64(56, 0) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/gd-in-descriptor", base: "vmdk", patch: func(p *patcher) { p.le64(56, 1) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/gd-beyond-eof", base: "vmdk", patch: func(p *patcher) { p.le64(56, 1<<40) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/gd-max", base: "vmdk", patch: func(p *patcher) { p.le64(56, ^uint64(0)-1) }, want: "VMDK_BAD_HEADER", refused: true},
		{name: "vmdk/rgd-beyond-eof", base: "vmdk", patch: func(p *patcher) { p.le64(48, 1<<40) }},
		{name: "vmdk/overhead-past-eof", base: "vmdk", patch: func(p *patcher) { p.le64(64, 1<<40) }, refused: true},
		{name: "vmdk/version-4", base: "vmdk", patch: func(p *patcher) { p.le32(4, 4) }, refused: true},
		{name: "vmdk/descriptor-offset-0", base: "vmdk", patch: func(p *patcher) { p.le64(28, 0) }, refused: true},
		{name: "vmdk/descriptor-size-max", base: "vmdk", patch: func(p *patcher) { p.le64(36, ^uint64(0)) }, refused: true},
		{name: "vmdk/descriptor-no-terminator", base: "vmdk", patch: func(p *patcher) {
			n := int(p.le64At(36)) * 512
			p.write(512, bytes.Repeat([]byte("ddb.x = \"y\"\n"), n/12+1)[:n])
		}, want: "VMDK_BAD_DESCRIPTOR", refused: true},
		{name: "vmdk/descriptor-one-long-line", base: "vmdk", patch: func(p *patcher) {
			n := int(p.le64At(36)) * 512
			p.write(512, append(bytes.Repeat([]byte("x"), n-1), 0))
		}, refused: true},
		{name: "vmdk/descriptor-garbage", base: "vmdk", patch: func(p *patcher) {
			n := int(p.le64At(36)) * 512
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(i*7 + 1)
			}
			b[n-1] = 0
			p.write(512, b)
		}, refused: true},
		{name: "vmdk/descriptor-parent-hint-long", base: "vmdk", patch: func(p *patcher) {
			d := strings.Replace(p.descriptor(), "parentCID=ffffffff", "parentCID=12345678\nparentFileNameHint=\""+strings.Repeat("p", 4000)+"\"", 1)
			p.setDescriptor(d)
		}},
		{name: "vmdk/descriptor-parent-hint-control", base: "vmdk", patch: func(p *patcher) {
			d := strings.Replace(p.descriptor(), "parentCID=ffffffff", "parentCID=12345678\nparentFileNameHint=\"\x1b[2J\"", 1)
			p.setDescriptor(d)
		}},
		{name: "vmdk/descriptor-extent-huge", base: "vmdk", patch: func(p *patcher) {
			d := regexp.MustCompile(`RW \d+ SPARSE`).ReplaceAllString(p.descriptor(), "RW 18446744073709551615 SPARSE")
			p.setDescriptor(d)
		}},
		{name: "vmdk/descriptor-flat-extent", base: "vmdk", patch: func(p *patcher) {
			d := regexp.MustCompile(`SPARSE "[^"]*"`).ReplaceAllString(p.descriptor(), `FLAT "/etc/passwd" 0`)
			p.setDescriptor(d)
		}, want: "VMDK_EXTERNAL_EXTENT", refused: true},

		// vmdk: grain directory and tables.
		{name: "vmdk/gd-entry-beyond-eof", base: "vmdk", patch: func(p *patcher) { p.le32(p.gdOffset(), 0xfffffff0) }},
		{name: "vmdk/gd-entry-at-header", base: "vmdk", patch: func(p *patcher) { p.le32(p.gdOffset(), 0) }},
		{name: "vmdk/gd-entry-is-descriptor", base: "vmdk", patch: func(p *patcher) { p.le32(p.gdOffset(), 1) }},
		{name: "vmdk/gd-entry-is-gd", base: "vmdk", patch: func(p *patcher) { p.le32(p.gdOffset(), uint32(p.gdOffset()/512)) }},
		{name: "vmdk/gt-entry-beyond-eof", base: "vmdk", patch: func(p *patcher) { p.le32(p.gtOffset(), 0xfffffff0) }},
		{name: "vmdk/gt-entry-at-header", base: "vmdk", patch: func(p *patcher) { p.le32(p.gtOffset(), 2) }},
		{name: "vmdk/gt-entry-last-sector", base: "vmdk", patch: func(p *patcher) { p.le32(p.gtOffset(), uint32(p.size()/512-1)) }},
		{name: "vmdk/gt-all-one-grain", base: "vmdk", patch: func(p *patcher) {
			g := p.le32At(p.gtOffset())
			for i := int64(0); i < 512; i++ {
				p.le32(p.gtOffset()+4*i, g)
			}
		}},

		{name: "vmdk/gd-8M-entries-one-empty-gt", base: "vmdk", patch: func(p *patcher) {
			// 2 TiB of 512-byte grains, every grain directory entry naming
			// the same empty grain table: one row, 2^32 grains.
			gd := (p.size() + 511) &^ 511
			gt := gd + 8<<20*4
			p.extend(gt + 2048)
			p.shareGT(gd, gt, 8<<20)
		}},
		{name: "vmdk/gd-8M-entries-one-gt", base: "vmdk", patch: func(p *patcher) {
			// The same with the base's first grain table, two data grains:
			// 32M rows, more than a worker may answer.
			gd := (p.size() + 511) &^ 511
			p.shareGT(gd, p.gtOffset(), 8<<20)
		}},

		// vmdk: streamOptimized.
		{name: "vmdk-stream/marker-size-max", base: "vmdk-stream", patch: func(p *patcher) { p.le32(int64(p.le32At(p.gtOffset()))*512+8, 0xffffffff) }},
		{name: "vmdk-stream/marker-size-0", base: "vmdk-stream", patch: func(p *patcher) { p.le32(int64(p.le32At(p.gtOffset()))*512+8, 0) }},
		{name: "vmdk-stream/grain-beyond-eof", base: "vmdk-stream", patch: func(p *patcher) { p.le32(p.gtOffset(), 0xfffffff0) }},
		{name: "vmdk-stream/grain-is-header", base: "vmdk-stream", patch: func(p *patcher) { p.le32(p.gtOffset(), 0) }},
		{name: "vmdk-stream/gd-at-end-no-footer", base: "vmdk-stream", patch: func(p *patcher) { p.le64(56, ^uint64(0)) }, refused: true},
		{name: "vmdk-stream/grain-size-huge", base: "vmdk-stream", patch: func(p *patcher) { p.le64(20, 1<<20) }, refused: true},
	}
}

// TestHostileImages runs every command of hostileCommands on every crafted
// image of hostileCases.
func TestHostileImages(t *testing.T) {
	bases := buildHostileBases(t)
	var (
		mu     sync.Mutex
		maxRSS int64
		maxDur time.Duration
		maxCPU time.Duration
	)
	t.Cleanup(func() {
		t.Logf("largest max RSS %d MiB, longest run %v, most CPU time %v", maxRSS>>20, maxDur.Round(time.Millisecond), maxCPU.Round(time.Millisecond))
	})
	for _, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			copyDir(t, bases[c.base], dir)
			image := hostileBases[c.base].image
			target := c.target
			if target == "" {
				target = image
			}
			p := openPatcher(t, filepath.Join(dir, target))
			c.patch(p)
			p.close()
			if *hostileKeep != "" {
				keep := filepath.Join(*hostileKeep, c.name)
				if err := os.MkdirAll(keep, 0o755); err != nil {
					t.Fatal(err)
				}
				copyDir(t, dir, keep)
			}
			before := hashDir(t, dir)
			for _, cmd := range hostileCommands {
				if why, ok := c.known[cmd.name]; ok {
					t.Logf("%s %s: skipped, known: %s", c.name, cmd.name, why)
					continue
				}
				r := runBounded(t, dir, hostileTimeout, cmd.args(image)...)
				mu.Lock()
				maxRSS, maxDur, maxCPU = max(maxRSS, r.maxRSS), max(maxDur, r.dur), max(maxCPU, r.cpu)
				mu.Unlock()
				t.Logf("%s %s: exit %d %s, %v, cpu %v, rss %d MiB", c.name, cmd.name, r.code, errorCode(r.stderr),
					r.dur.Round(time.Millisecond), r.cpu.Round(time.Millisecond), r.maxRSS>>20)
				if err := judgeHostile(c, cmd.name, r); err != nil {
					t.Errorf("%s: %v\nstdout: %.2000s\nstderr: %.2000s", cmd.name, err, r.stdout, r.stderr)
				}
			}
			if after := hashDir(t, dir); !maps2Equal(before, after) {
				t.Errorf("the image directory changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// hostileChange is one changing command run on a crafted image, each on a
// fresh copy of its directory. The directory holds good.qcow2 and good.vmdk,
// good images to rebase onto; setup says how the crafted image stands in its
// chain.
type hostileChange struct {
	name  string
	setup hostileSetup
	// file is the image the command operates on, relative to the
	// directory; args is the command line.
	file func(image string) string
	args func(image, format string) []string
	// safe says the guest content of file must not change.
	safe bool
	// done are exit statuses besides 0 that also mean the command ran to
	// its end (check -r: problems left, or a format without checks).
	done []int
	// small: run only on images up to hostileVerifyMax bytes (the repair
	// walks the tables three times; the few huge crafted images cost the
	// suite minutes and are bounded by the check's own walk).
	small bool
}

// hostileSetup is how a case's directory is prepared for a changing command.
type hostileSetup int

const (
	// asIs: the crafted image as the read commands see it.
	asIs hostileSetup = iota
	// over: before the patch, the image is given good.<format> as its
	// backing file (unless it already has one), so that a commit writes
	// the crafted image's data into a good base.
	over
	// under: before the patch, a good overlay ov.qcow2 with data of its
	// own is made over the image, so that a commit writes into the crafted
	// image.
	under
)

var hostileChanges = []hostileChange{
	{name: "rebase-unsafe", file: self, args: func(img, f string) []string {
		return []string{"rebase", "-u", "-b", "good." + f, "-F", f, img}
	}},
	{name: "rebase-safe", file: self, safe: true, args: func(img, f string) []string {
		return []string{"rebase", "-b", "good." + f, "-F", f, img}
	}},
	{name: "rebase-detach", file: self, safe: true, args: func(img, f string) []string {
		return []string{"rebase", "-b", "", img}
	}},
	{name: "commit-top", setup: over, file: self, safe: true, args: func(img, f string) []string {
		return []string{"commit", img}
	}},
	{name: "commit-base", setup: under, file: func(string) string { return "ov.qcow2" }, safe: true, args: func(img, f string) []string {
		return []string{"commit", "ov.qcow2"}
	}},
	{name: "repair-all", file: self, safe: true, done: []int{2, 3, 63}, small: true, args: func(img, f string) []string {
		return []string{"check", "-q", "-r", "all", img}
	}},
}

func self(image string) string { return image }

// goodImages are built once into every directory a changing command runs in.
var goodImages = []string{
	"qemu-img create -q -f qcow2 good.qcow2 4M",
	"qemu-io -f qcow2 -c 'write -P 0x5a 0 128k' -c 'write -P 0x5b 2M 64k' good.qcow2",
	"qemu-img create -q -f vmdk good.vmdk 4M",
	"qemu-io -f vmdk -c 'write -P 0x5a 0 128k' -c 'write -P 0x5b 2M 64k' good.vmdk",
}

// hostileChangingKnown lists known gaps of the changing commands, skipped
// until fixed: case name → command name → reason. None today.
var hostileChangingKnown = map[string]map[string]string{}

// Bounds of the qemu-img runs that judge a changing command's result: a
// crafted image may be slow for qemu too, and a qemu-img that cannot answer
// in time judges nothing.
const hostileQemuTimeout = 10 * time.Second

// hostileVerifyMax is the largest image file whose result qemu-img judges: the
// few crafted images with tables of millions of entries (32 MiB and more) take
// qemu-img tens of seconds each, so on those the changing commands are held
// to the other requirements only.
const hostileVerifyMax = 16 << 20

// TestHostileChangingImages runs the changing commands of hostileChanges on
// every crafted image of hostileCases: a named error or a success, within the
// bounds of the read commands, no panic; a failed command writes nothing, and
// a successful one leaves no image checking worse than before and, for the
// safe ones, the guest content unchanged.
func TestHostileChangingImages(t *testing.T) {
	bases := buildHostileBases(t)
	good := t.TempDir()
	for _, sh := range goodImages {
		shellIn(t, good, sh)
	}
	var (
		mu       sync.Mutex
		outcomes = map[string]int{}
	)
	t.Cleanup(func() { t.Logf("outcomes: %v", outcomes) })
	for _, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			image := hostileBases[c.base].image
			format := qemutest.FormatOf(image)
			prepared := map[hostileSetup]string{}
			for _, ch := range hostileChanges {
				if _, ok := prepared[ch.setup]; !ok {
					prepared[ch.setup] = craftChanging(t, c, bases[c.base], good, ch.setup)
					if *hostileKeep != "" {
						copyDir(t, prepared[ch.setup], filepath.Join(*hostileKeep, c.name, ch.name))
					}
				}
			}
			for _, ch := range hostileChanges {
				if why, ok := hostileChangingKnown[c.name][ch.name]; ok {
					t.Logf("%s: skipped, known: %s", ch.name, why)
					continue
				}
				pristine := prepared[ch.setup]
				if ch.small && fileSize(t, filepath.Join(pristine, ch.file(image))) > hostileVerifyMax {
					t.Logf("%s: skipped, the image is larger than %d bytes", ch.name, hostileVerifyMax)
					continue
				}
				dir := t.TempDir()
				copyDir(t, pristine, dir)
				before := hashDir(t, dir)
				r := runBounded(t, dir, hostileTimeout, ch.args(image, format)...)
				code := errorCode(r.stderr)
				mu.Lock()
				outcomes[fmt.Sprintf("%s %d %s", ch.name, r.code, code)]++
				mu.Unlock()
				t.Logf("%s: exit %d %s, %v, cpu %v, rss %d MiB", ch.name, r.code, code,
					r.dur.Round(time.Millisecond), r.cpu.Round(time.Millisecond), r.maxRSS>>20)
				if err := judgeChanging(c, ch, r); err != nil {
					t.Errorf("%s: %v\nstdout: %.2000s\nstderr: %.2000s", ch.name, err, r.stdout, r.stderr)
					continue
				}
				after := hashDir(t, dir)
				if r.code != 0 && !slices.Contains(ch.done, r.code) {
					if !maps2Equal(before, after) {
						t.Errorf("%s failed with %s and changed the directory:\nbefore %v\nafter  %v", ch.name, code, before, after)
					}
					continue
				}
				for _, err := range verifyChanged(t, ch, pristine, dir, image, before, after) {
					t.Errorf("%s succeeded: %v", ch.name, err)
				}
			}
		})
	}
}

// craftChanging makes a directory for the changing commands on case c: the
// good images, the base directory's files prepared as setup says, and the
// patch.
func craftChanging(t *testing.T, c hostileCase, base, good string, setup hostileSetup) string {
	t.Helper()
	dir := t.TempDir()
	copyDir(t, base, dir)
	copyDir(t, good, dir)
	image := hostileBases[c.base].image
	format := qemutest.FormatOf(image)
	switch setup {
	case over:
		if c.base != "qcow2-chain" {
			// qemu-img cannot rebase a vmdk; instarfs can, and the image
			// is still good here. A streamOptimized vmdk cannot be
			// written: its commit then has no backing file to go to.
			r := runOp(t, dir, nil, "rebase", "-u", "-b", "good."+format, "-F", format, image)
			if r.code != 0 && !bytes.Contains(r.stderr, []byte("VMDK_READ_ONLY")) {
				t.Fatalf("giving %s a backing file: %s", image, r.stderr)
			}
		}
	case under:
		shellIn(t, dir, "qemu-img create -q -f qcow2 -b "+image+" -F "+format+" ov.qcow2 && "+
			"qemu-io -f qcow2 -c 'write -P 0x77 1M 128k' -c 'write -z 3M 64k' ov.qcow2 >/dev/null")
	}
	target := c.target
	if target == "" {
		target = image
	}
	p := openPatcher(t, filepath.Join(dir, target))
	c.patch(p)
	p.close()
	return dir
}

// judgeChanging says what is wrong with the outcome of a changing command on
// c, apart from what it did to the images.
func judgeChanging(c hostileCase, ch hostileChange, r boundedResult) error {
	all := append(append([]byte{}, r.stdout...), r.stderr...)
	for _, s := range []string{"panic:", "goroutine ", "runtime error", "runtime.", ".go:"} {
		if bytes.Contains(all, []byte(s)) {
			return fmt.Errorf("the output contains %q: a Go panic or trace leaked", s)
		}
	}
	switch {
	case r.timedOut:
		return fmt.Errorf("no answer within %v", hostileTimeout)
	case r.cpu > hostileMaxCPU:
		return fmt.Errorf("used %v of CPU time, more than %v", r.cpu.Round(time.Millisecond), hostileMaxCPU)
	case r.maxRSS > hostileMaxRSS:
		return fmt.Errorf("max RSS %d MiB, more than %d MiB", r.maxRSS>>20, hostileMaxRSS>>20)
	case r.code == 0 || slices.Contains(ch.done, r.code):
		// Every changing command opens the crafted image: one info
		// refuses cannot be changed. (With over, the patch lands on a
		// header that names a backing file; it may then mean something
		// else.)
		if c.refused && c.target == "" && ch.setup != over {
			return errors.New("succeeded on an image info refuses")
		}
		return nil
	case r.code != 1:
		return fmt.Errorf("exit status %d", r.code)
	}
	switch code := errorCode(r.stderr); {
	case code == "":
		return errors.New("failed without naming an error code")
	case slices.Contains(badCodes, code):
		return fmt.Errorf("failed with %s", code)
	}
	return nil
}

// verifyChanged checks the images a successful changing command left in dir
// against pristine, the directory before the command: no image checks worse
// than before, and a safe command kept its file's guest content, where qemu
// can read it.
func verifyChanged(t *testing.T, ch hostileChange, pristine, dir, image string, before, after map[string]string) []error {
	t.Helper()
	var errs []error
	for name := range after {
		if before[name] == after[name] || !isImageName(name) {
			continue
		}
		if fileSize(t, filepath.Join(pristine, name)) > hostileVerifyMax {
			t.Logf("%s: too large for qemu-img to judge in time; not checked", name)
			continue
		}
		was := qemuCheck(t, filepath.Join(pristine, name))
		now := -1
		if was >= 0 {
			now = qemuCheck(t, filepath.Join(dir, name))
		}
		if was < 0 || now < 0 {
			t.Logf("%s: qemu-img check did not answer in time; not compared", name)
			continue
		}
		if checkRank(now) > checkRank(was) {
			errs = append(errs, fmt.Errorf("qemu-img check %s: exit %d after, %d before", name, now, was))
		}
	}
	if !ch.safe {
		return errs
	}
	file := ch.file(image)
	a, b := filepath.Join(pristine, file), filepath.Join(dir, file)
	if fileSize(t, a) > hostileVerifyMax || qemuCompare(t, a, a) != 0 {
		t.Logf("qemu-img cannot read %s in time; its content is not compared", file)
		return errs
	}
	switch got := qemuCompare(t, a, b); got {
	case 0:
	case -1:
		t.Logf("qemu-img compare of %s did not answer in time", file)
	default:
		errs = append(errs, fmt.Errorf("qemu-img compare of %s before and after: exit %d", file, got))
	}
	return errs
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func isImageName(name string) bool {
	switch filepath.Ext(name) {
	case ".qcow2", ".vmdk":
		return true
	}
	return false
}

// qemuCheck returns the exit status of qemu-img check on the image at path,
// or -1 when it did not answer in time.
func qemuCheck(t *testing.T, path string) int {
	return qemuBounded(t, "check", "-f", qemutest.FormatOf(path), path)
}

// qemuCompare returns the exit status of qemu-img compare of two images (0
// same content, 1 different, 2 error), or -1 when it did not answer in time.
func qemuCompare(t *testing.T, a, b string) int {
	return qemuBounded(t, "compare", "-f", qemutest.FormatOf(a), "-F", qemutest.FormatOf(b), a, b)
}

func qemuBounded(t *testing.T, args ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hostileQemuTimeout)
	defer cancel()
	err := qemutest.System.Command(ctx, t, "", "qemu-img", args...).Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return -1
	case errors.As(err, &ee):
		return ee.ExitCode()
	case err != nil:
		t.Fatalf("qemu-img %v: %v", args, err)
	}
	return 0
}

// checkRank orders qemu-img check's exit statuses from best to worst: clean,
// leaks only, corruptions, check not completed.
func checkRank(status int) int {
	switch status {
	case 0:
		return 0
	case 3:
		return 1
	case 2:
		return 2
	}
	return 3
}

// judgeHostile says what is wrong with the outcome of command cmd on c, if
// anything.
func judgeHostile(c hostileCase, cmd string, r boundedResult) error {
	all := append(append([]byte{}, r.stdout...), r.stderr...)
	for _, s := range []string{"panic:", "goroutine ", "runtime error", "runtime.", ".go:"} {
		if bytes.Contains(all, []byte(s)) {
			return fmt.Errorf("the output contains %q: a Go panic or trace leaked", s)
		}
	}
	if r.timedOut {
		return fmt.Errorf("no answer within %v", hostileTimeout)
	}
	if r.cpu > hostileMaxCPU {
		return fmt.Errorf("used %v of CPU time, more than %v", r.cpu.Round(time.Millisecond), hostileMaxCPU)
	}
	if r.maxRSS > hostileMaxRSS {
		return fmt.Errorf("max RSS %d MiB, more than %d MiB", r.maxRSS>>20, hostileMaxRSS>>20)
	}
	// A check that ran prints its report, whatever its exit status (0 clean,
	// 1 check errors, 2 corrupt, 3 leaks).
	if strings.HasPrefix(cmd, "check") && (r.code <= 3) && json.Valid(r.stdout) && len(r.stdout) > 0 {
		return nil
	}
	if r.code == 0 {
		if strings.HasPrefix(cmd, "info") && c.refused {
			return errors.New("info succeeded on an image it must refuse")
		}
		if strings.HasSuffix(cmd, "-human") {
			return nil
		}
		if !json.Valid(r.stdout) {
			return errors.New("exit 0 but the output is not JSON")
		}
		return nil
	}
	if r.code != 1 {
		return fmt.Errorf("exit status %d", r.code)
	}
	code := errorCode(r.stderr)
	switch {
	case code == "":
		return errors.New("failed without naming an error code")
	case slices.Contains(badCodes, code):
		return fmt.Errorf("failed with %s", code)
	case c.want != "" && code != c.want:
		return fmt.Errorf("failed with %s, want %s", code, c.want)
	}
	return nil
}

var errorLine = regexp.MustCompile(`(?m)^instarfs: ([A-Z][A-Z0-9_]*): `)

// errorCode returns the code of the error instarfs printed, or "".
func errorCode(stderr []byte) string {
	m := errorLine.FindAllSubmatch(stderr, -1)
	if len(m) != 1 {
		return ""
	}
	return string(m[0][1])
}

// boundedResult is a run of the binary under test with its costs.
type boundedResult struct {
	result
	dur      time.Duration // wall clock
	cpu      time.Duration // user and system time of the CLI and the children it waited for
	maxRSS   int64         // bytes: the largest of the CLI and the children it waited for
	timedOut bool
}

// runBounded runs the binary under test in dir, killed after timeout.
func runBounded(t testing.TB, dir string, timeout time.Duration, args ...string) boundedResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := boundedResult{dur: time.Since(start), timedOut: ctx.Err() != nil}
	r.stdout, r.stderr = out.Bytes(), errb.Bytes()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running instarfs %v: %v", args, err)
	}
	if cmd.ProcessState != nil {
		r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.maxRSS = ru.Maxrss << 10 // KiB on Linux
		}
	}
	return r
}

var (
	hostileBasesOnce sync.Once
	hostileBaseDirs  map[string]string
	hostileBasesErr  error
)

// buildHostileBases builds every base directory once per test binary run.
func buildHostileBases(t *testing.T) map[string]string {
	t.Helper()
	hostileBasesOnce.Do(func() {
		root, err := os.MkdirTemp(filepath.Dir(binary), "hostile-") // removed with the harness's directory
		if err != nil {
			hostileBasesErr = err
			return
		}
		hostileBaseDirs = map[string]string{}
		for name, b := range hostileBases {
			dir := filepath.Join(root, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				hostileBasesErr = err
				return
			}
			for _, sh := range b.build {
				cmd := exec.Command("sh", "-c", sh)
				cmd.Dir = dir
				if out, err := cmd.CombinedOutput(); err != nil {
					hostileBasesErr = fmt.Errorf("%s: %s: %v\n%s", name, sh, err, out)
					return
				}
			}
			hostileBaseDirs[name] = dir
		}
	})
	if hostileBasesErr != nil {
		t.Fatal(hostileBasesErr)
	}
	return hostileBaseDirs
}

// hashDir returns the sha256 and size of every file in dir.
func hashDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fmt.Sprintf("%x/%d", h.Sum(nil), n)
	}
	return out
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// patcher edits an image file in place. Its reads and writes fail the test
// on error.
type patcher struct {
	t *testing.T
	f *os.File
}

func openPatcher(t *testing.T, path string) *patcher {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &patcher{t: t, f: f}
}

func (p *patcher) close() {
	if err := p.f.Close(); err != nil {
		p.t.Fatal(err)
	}
}

func (p *patcher) size() int64 {
	st, err := p.f.Stat()
	if err != nil {
		p.t.Fatal(err)
	}
	return st.Size()
}

func (p *patcher) write(off int64, b []byte) {
	if _, err := p.f.WriteAt(b, off); err != nil {
		p.t.Fatal(err)
	}
}

func (p *patcher) read(off int64, n int) []byte {
	b := make([]byte, n)
	if _, err := p.f.ReadAt(b, off); err != nil {
		p.t.Fatalf("reading %d bytes at %#x: %v", n, off, err)
	}
	return b
}

func (p *patcher) truncate(n int64) {
	if err := p.f.Truncate(n); err != nil {
		p.t.Fatal(err)
	}
}

// extend makes the file at least n bytes long (the new part a hole).
func (p *patcher) extend(n int64) {
	if p.size() < n {
		p.truncate(n)
	}
}

func (p *patcher) be16(off int64, v uint16) { p.write(off, endian.BigEndian.AppendUint16(nil, v)) }
func (p *patcher) be32(off int64, v uint32) { p.write(off, endian.BigEndian.AppendUint32(nil, v)) }
func (p *patcher) be64(off int64, v uint64) { p.write(off, endian.BigEndian.AppendUint64(nil, v)) }
func (p *patcher) le32(off int64, v uint32) { p.write(off, endian.LittleEndian.AppendUint32(nil, v)) }
func (p *patcher) le64(off int64, v uint64) { p.write(off, endian.LittleEndian.AppendUint64(nil, v)) }

func (p *patcher) be32At(off int64) uint32 { return endian.BigEndian.Uint32(p.read(off, 4)) }
func (p *patcher) be64At(off int64) uint64 { return endian.BigEndian.Uint64(p.read(off, 8)) }
func (p *patcher) le32At(off int64) uint32 { return endian.LittleEndian.Uint32(p.read(off, 4)) }
func (p *patcher) le64At(off int64) uint64 { return endian.LittleEndian.Uint64(p.read(off, 8)) }

// qcow2 layout, read from the header.

func (p *patcher) l1Offset() int64 { return int64(p.be64At(40)) }

// l2Offset is the L2 table of the first L1 entry.
func (p *patcher) l2Offset() int64 {
	l2 := int64(p.be64At(p.l1Offset()) & 0x00fffffffffffe00)
	if l2 == 0 {
		p.t.Fatal("the base image has no L2 table for L1 entry 0")
	}
	return l2
}

// refblockOffset is the first refcount block.
func (p *patcher) refblockOffset() uint64 { return p.be64At(int64(p.be64At(48))) }

// moveL1 writes a new L1 table of n entries at the end of the file (cluster
// aligned) and points the header at it: entry 0 is the old entry 0, the
// others entry(i), or empty when entry is nil.
func (p *patcher) moveL1(n int, entry func(i int) uint64) {
	cs := int64(1) << p.be32At(20)
	first := p.be64At(p.l1Offset())
	off := (p.size() + cs - 1) &^ (cs - 1)
	const chunk = 8192
	buf := make([]byte, 8*chunk)
	for i := 0; i < n; i += chunk {
		m := min(chunk, n-i)
		clear(buf)
		for j := 0; j < m; j++ {
			var v uint64
			switch {
			case i+j == 0:
				v = first
			case entry != nil:
				v = entry(i + j)
			}
			endian.BigEndian.PutUint64(buf[8*j:], v)
		}
		if entry != nil || i == 0 {
			p.write(off+8*int64(i), buf[:8*m])
		}
	}
	p.extend(off + 8*int64(n))
	p.be64(40, uint64(off))
	p.be32(36, uint32(n))
}

// vmdk layout, read from the header.

// gdOffset is the byte offset of the grain directory.
func (p *patcher) gdOffset() int64 { return int64(p.le64At(56)) * 512 }

// gtOffset is the byte offset of the first grain table.
func (p *patcher) gtOffset() int64 {
	gt := int64(p.le32At(p.gdOffset())) * 512
	if gt == 0 {
		p.t.Fatal("the base vmdk has no grain table 0")
	}
	return gt
}

// shareGT writes a grain directory of n entries at byte gd, every entry
// naming the grain table at byte gt, and makes the header use it alone, with
// 512-byte grains and the capacity n grain tables cover.
func (p *patcher) shareGT(gd, gt int64, n int) {
	b := make([]byte, 4*n)
	for i := range n {
		endian.LittleEndian.PutUint32(b[4*i:], uint32(gt/512))
	}
	p.write(gd, b)
	p.le64(56, uint64(gd/512))
	p.le64(48, 0)             // no redundant directory
	p.le32(8, p.le32At(8)&^2) // nor its flag
	p.le64(20, 1)             // grain size
	p.le64(12, uint64(n)*uint64(p.le32At(44)))
}

// descriptor is the embedded descriptor text.
func (p *patcher) descriptor() string {
	b := p.read(512, int(p.le64At(36))*512)
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// setDescriptor replaces the embedded descriptor, which must fit its area.
func (p *patcher) setDescriptor(s string) {
	n := int(p.le64At(36)) * 512
	if len(s) >= n {
		p.t.Fatalf("descriptor of %d bytes does not fit in %d", len(s), n)
	}
	b := make([]byte, n)
	copy(b, s)
	p.write(512, b)
}

// hostileMountFiles are the generated files of an image directory that
// TestHostileMount reads.
var hostileMountFiles = []string{"info.json", "chain.json", "map.json", "map.svg", "check.json", "status", "result.json"}

// hostileMountWrites are the control-file writes TestHostileMount makes on
// each crafted image, in order; each may change the image the next one sees.
var hostileMountWrites = []struct {
	change string // the command of hostileChanges it matches, for hostileChangingKnown
	file   string
	line   func(format string) string
}{
	{"rebase-unsafe", "rebase", func(f string) string { return "-u -F " + f + " good." + f }},
	{"rebase-safe", "rebase", func(f string) string { return "-F " + f + " good." + f }},
	{"rebase-detach", "rebase", func(string) string { return `-b ""` }},
	{"commit-top", "commit", func(string) string { return "" }},
}

// TestHostileMount mounts a directory holding every crafted image of
// hostileCases (one subdirectory each, with good images beside it), reads
// every generated file of every image directory and writes the control files
// of each crafted image. Each read answers with data or an errno within the
// time bound; a write that fails leaves the images as they were and names an
// error code that is not an internal failure. The mount keeps serving
// throughout. (What a successful job did to the images is judged by
// TestHostileChangingImages, which runs the same operations.)
func TestHostileMount(t *testing.T) {
	bases := buildHostileBases(t)
	root := t.TempDir()
	good := filepath.Join(root, "good")
	if err := os.Mkdir(good, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, sh := range goodImages {
		shellIn(t, good, sh)
	}
	cases := hostileCases()
	for _, c := range cases {
		dir := filepath.Join(root, hostileDirName(c))
		copyDir(t, bases[c.base], dir)
		copyDir(t, good, dir)
		target := c.target
		if target == "" {
			target = hostileBases[c.base].image
		}
		p := openPatcher(t, filepath.Join(dir, target))
		c.patch(p)
		p.close()
	}
	m := mount(t, root, nil)
	alive := func(t *testing.T) {
		t.Helper()
		if r := boundedShell(t, m.mnt, "cat good/good.qcow2/info.json"); r.code != 0 || !json.Valid(r.stdout) {
			t.Fatalf("the mount no longer serves a good image: exit %d, %s\n%s", r.code, r.stderr, m.stderr)
		}
	}
	alive(t)

	t.Run("cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				name := hostileDirName(c)
				dir := filepath.Join(root, name)
				before := hashDir(t, dir)
				images, err := os.ReadDir(m.path(name))
				if err != nil {
					t.Fatalf("listing the case directory: %v", err)
				}
				for _, img := range images {
					if !img.IsDir() {
						continue
					}
					for _, f := range hostileMountFiles {
						rel := filepath.Join(name, img.Name(), f)
						r := boundedShell(t, m.mnt, "cat "+quote(rel))
						if err := judgeMountRead(r); err != nil {
							t.Errorf("reading %s: %v", rel, err)
						}
					}
				}
				if after := hashDir(t, dir); !maps2Equal(before, after) {
					t.Errorf("reading changed the directory:\nbefore %v\nafter  %v", before, after)
				}

				image := hostileBases[c.base].image
				format := qemutest.FormatOf(image)
				if _, err := os.Stat(m.path(name, image)); err != nil {
					t.Logf("%s is not shown (%v): no control files", image, err)
					return
				}
				for _, w := range hostileMountWrites {
					if why, ok := hostileChangingKnown[c.name][w.change]; ok {
						t.Logf("%s: skipped, known: %s", w.change, why)
						continue
					}
					before := hashDir(t, dir)
					line := w.line(format)
					r := boundedShell(t, m.mnt, "echo "+quote(line)+" > "+quote(filepath.Join(name, image, w.file)))
					if r.timedOut {
						t.Errorf("%s %s: no answer within %v", w.file, line, hostileTimeout)
						continue
					}
					status := m.read(t, name, image, "status")
					var env struct {
						Error map[string]string
					}
					if err := json.Unmarshal([]byte(m.read(t, name, image, "result.json")), &env); err != nil {
						t.Errorf("%s %s: result.json: %v", w.file, line, err)
					}
					code := codeOf(env.Error)
					t.Logf("%s %s: exit %d %s; status %q", w.file, line, r.code, bytes.TrimSpace(r.stderr), strings.TrimSpace(status))
					if r.code == 0 {
						continue
					}
					if !strings.HasPrefix(status, "failed "+w.file) {
						t.Errorf("%s %s failed (%s) but status is %q", w.file, line, r.stderr, status)
					}
					switch {
					case code == "":
						t.Errorf("%s %s failed without an error code in result.json", w.file, line)
					case slices.Contains(badCodes, strings.ToUpper(code)):
						t.Errorf("%s %s failed with %s: %s", w.file, line, code, status)
					}
					if after := hashDir(t, dir); !maps2Equal(before, after) {
						t.Errorf("%s %s failed and changed the directory:\nbefore %v\nafter  %v", w.file, line, before, after)
					}
				}
			})
		}
	})
	alive(t)
}

// hostileDirName is the directory of case c in TestHostileMount.
func hostileDirName(c hostileCase) string { return strings.ReplaceAll(c.name, "/", "_") }

// judgeMountRead says what is wrong with reading a generated file through
// the mount: it must answer, with data or an errno.
func judgeMountRead(r boundedResult) error {
	switch {
	case r.timedOut:
		return fmt.Errorf("no answer within %v", hostileTimeout)
	case r.code == 0:
		return nil
	case r.code == 1 && bytes.HasPrefix(r.stderr, []byte("cat: ")):
		return nil // an errno, which cat names
	}
	return fmt.Errorf("exit %d: %s", r.code, r.stderr)
}

// boundedShell runs a bash command line in dir, killed after hostileTimeout.
func boundedShell(t *testing.T, dir, script string) boundedResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hostileTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := boundedResult{timedOut: ctx.Err() != nil}
	r.stdout, r.stderr = out.Bytes(), errb.Bytes()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("bash -c %s: %v", script, err)
	}
	return r
}
