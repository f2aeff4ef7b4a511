package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
)

// vmlinux returns the kernel ELF inside a bzImage whose payload is LZ4
// (legacy frames, as the Linux build writes them), if that ELF has a PVH
// entry point. QEMU boots such an ELF directly, which spares the guest its
// own decompression: the slowest part of a boot under TCG after the kernel's
// initialisation.
func vmlinux(bz []byte) ([]byte, error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" || binary.LittleEndian.Uint16(bz[0x206:]) < 0x208 {
		return nil, errors.New("not a bzImage of boot protocol 2.08 or later")
	}
	setup := int(bz[0x1f1])
	if setup == 0 {
		setup = 4
	}
	start := (setup + 1) * 512
	off := start + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off < start || n < 8 || off+n > len(bz) {
		return nil, errors.New("the payload lies outside the bzImage")
	}
	payload := bz[off : off+n]
	size := int(binary.LittleEndian.Uint32(payload[n-4:])) // appended by the kernel's build
	elfData, err := lz4Legacy(payload[:n-4], size)
	if err != nil {
		return nil, err
	}
	if err := hasPVH(elfData); err != nil {
		return nil, err
	}
	return elfData, nil
}

// lz4Legacy decodes LZ4 legacy frames: a magic number, then blocks, each a
// little-endian length and an LZ4 block; a magic number may start another
// frame.
func lz4Legacy(in []byte, size int) ([]byte, error) {
	const magic = 0x184c2102
	if len(in) < 4 || binary.LittleEndian.Uint32(in) != magic {
		return nil, errors.New("the payload is not LZ4 (legacy frames)")
	}
	in = in[4:]
	out := make([]byte, 0, size)
	for len(in) >= 4 {
		n := binary.LittleEndian.Uint32(in)
		in = in[4:]
		if n == magic {
			continue
		}
		if int64(n) > int64(len(in)) {
			return nil, errors.New("an LZ4 block runs past the payload")
		}
		var err error
		if out, err = lz4Block(out, in[:n], size); err != nil {
			return nil, err
		}
		in = in[n:]
	}
	if len(out) != size {
		return nil, fmt.Errorf("LZ4 payload decodes to %d bytes, the bzImage says %d", len(out), size)
	}
	return out, nil
}

// lz4Block appends the decoding of one LZ4 block to out, which must not
// grow past limit: sequences of a token (literal length, match length − 4),
// extra length bytes, literals, a 2-byte offset back into the output and
// extra match length bytes; the last sequence has literals only.
func lz4Block(out, in []byte, limit int) ([]byte, error) {
	bad := errors.New("a corrupt LZ4 block")
	length := func(n int) (int, error) {
		if n != 15 {
			return n, nil
		}
		for {
			if len(in) == 0 {
				return 0, bad
			}
			b := in[0]
			in = in[1:]
			n += int(b)
			if b != 255 {
				return n, nil
			}
		}
	}
	for len(in) > 0 {
		token := in[0]
		in = in[1:]
		lit, err := length(int(token >> 4))
		if err != nil || lit > len(in) || len(out)+lit > limit {
			return nil, bad
		}
		out, in = append(out, in[:lit]...), in[lit:]
		if len(in) == 0 {
			return out, nil
		}
		if len(in) < 2 {
			return nil, bad
		}
		back := int(binary.LittleEndian.Uint16(in))
		in = in[2:]
		match, err := length(int(token & 15))
		match += 4
		if err != nil || back == 0 || back > len(out) || len(out)+match > limit {
			return nil, bad
		}
		for from := len(out) - back; match > 0; match-- { // may overlap itself
			out = append(out, out[from])
			from++
		}
	}
	return out, nil
}

// hasPVH checks that data is an x86-64 ELF with the Xen PVH entry note
// (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU needs to boot it.
func hasPVH(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("the decompressed kernel: %w", err)
	}
	const phys32Entry = 18
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes := make([]byte, p.Filesz)
		if _, err := p.ReadAt(notes, 0); err != nil {
			return err
		}
		for len(notes) >= 12 {
			nameSize := int(binary.LittleEndian.Uint32(notes))
			descSize := int(binary.LittleEndian.Uint32(notes[4:]))
			typ := binary.LittleEndian.Uint32(notes[8:])
			pad := func(n int) int { return (n + 3) &^ 3 }
			end := 12 + pad(nameSize) + pad(descSize)
			if end > len(notes) || end < 12 {
				break
			}
			if typ == phys32Entry && string(bytes.TrimRight(notes[12:12+nameSize], "\x00")) == "Xen" {
				return nil
			}
			notes = notes[end:]
		}
	}
	return errors.New("the kernel has no PVH entry point")
}
