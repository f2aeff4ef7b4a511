// Package raw reads raw disk images, and recognises the partition tables that
// let instarfs call a file raw without being told.
//
// Raw has no magic, so any file "is" raw. qemu probes it as raw when nothing else
// matches, which is how a crafted guest disk can pass for another format and the
// other way round. instarfs never infers raw for a backing file; for a top image
// it accepts raw without -f only when the first sectors carry a sane MBR or a
// GPT whose header checksum is right (Detect).
package raw

import (
	"encoding/binary"
	"hash/crc32"
)

// DetectBytes is how many bytes from the start of the file Detect wants: the MBR
// and a GPT header at LBA 1 for 512- and 4096-byte sectors. Fewer are fine for a
// shorter file; with fewer than 1024 bytes no GPT can be found.
const DetectBytes = 8192

// Table is the kind of partition table Detect found.
type Table uint8

const (
	NoTable Table = iota
	MBR
	GPT
)

func (t Table) String() string {
	switch t {
	case MBR:
		return "mbr"
	case GPT:
		return "gpt"
	}
	return "none"
}

const (
	mbrTable      = 446 // four 16-byte entries
	typeProtected = 0xee
	gptHeaderMin  = 92
)

type mbrEntry struct {
	status, typ  byte
	start, count uint32
}

func mbrEntries(b []byte) [4]mbrEntry {
	var es [4]mbrEntry
	for i := range es {
		e := b[mbrTable+16*i:]
		es[i] = mbrEntry{status: e[0], typ: e[4],
			start: binary.LittleEndian.Uint32(e[8:]), count: binary.LittleEndian.Uint32(e[12:])}
	}
	return es
}

// Detect reports whether first, the first DetectBytes of a file (or all of a
// shorter one), starts with a partition table.
func Detect(first []byte) bool { return DetectTable(first) != NoTable }

// DetectTable returns the partition table first starts with:
//
//   - GPT: an MBR signature, a protective (0xEE) entry, and an "EFI PART" header
//     at LBA 1 (512- or 4096-byte sectors) with MyLBA 1 and a valid CRC32.
//   - MBR: an MBR signature and sane entries: status 0x00 or 0x80, unused
//     entries empty, used entries non-empty, after sector 0 and not overlapping,
//     at least one used, none protective.
func DetectTable(first []byte) Table {
	if len(first) < 512 || first[510] != 0x55 || first[511] != 0xaa {
		return NoTable
	}
	es := mbrEntries(first)
	used := 0
	for i, e := range es {
		if e.status != 0x00 && e.status != 0x80 {
			return NoTable
		}
		if e.typ == 0 {
			if e.start != 0 || e.count != 0 {
				return NoTable
			}
			continue
		}
		if e.typ == typeProtected {
			if gptHeader(first) {
				return GPT
			}
			return NoTable
		}
		if e.count == 0 || e.start == 0 {
			return NoTable
		}
		for _, o := range es[:i] {
			if o.typ != 0 && uint64(e.start) < uint64(o.start)+uint64(o.count) &&
				uint64(o.start) < uint64(e.start)+uint64(e.count) {
				return NoTable
			}
		}
		used++
	}
	if used == 0 {
		return NoTable
	}
	return MBR
}

// gptHeader looks for a valid GPT header at LBA 1 for both common sector sizes.
func gptHeader(first []byte) bool {
	for _, ss := range []int{512, 4096} {
		if len(first) < ss+gptHeaderMin {
			continue
		}
		h := first[ss:min(len(first), 2*ss)]
		if string(h[:8]) != "EFI PART" {
			continue
		}
		size := binary.LittleEndian.Uint32(h[12:])
		if size < gptHeaderMin || uint64(size) > uint64(len(h)) {
			continue
		}
		if binary.LittleEndian.Uint64(h[24:]) != 1 { // MyLBA
			continue
		}
		want := binary.LittleEndian.Uint32(h[16:])
		crc := crc32.NewIEEE()
		crc.Write(h[:16])
		crc.Write([]byte{0, 0, 0, 0})
		crc.Write(h[20:size])
		if crc.Sum32() == want {
			return true
		}
	}
	return false
}
