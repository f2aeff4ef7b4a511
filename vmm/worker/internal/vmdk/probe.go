package vmdk

import "bytes"

// ProbeBytes is how many bytes from the start of a file Probe and Detect want to
// see (qemu's probe buffer). Fewer are fine for a shorter file.
const ProbeBytes = 2048

// FileKind is what the first bytes of a file say about it.
type FileKind uint8

const (
	NotVMDK        FileKind = iota
	SparseExtent            // "KDMV": monolithicSparse or streamOptimized
	COWDExtent              // "COWD": ESX vmfsSparse, not supported
	DescriptorFile          // a plain-text descriptor naming extent files
)

// Detect classifies a file by its first bytes the way qemu's vmdk probe does: a
// sparse magic, or text whose first line that is neither a comment nor blank is
// "version=1", "version=2" or "version=3".
func Detect(first []byte) FileKind {
	if len(first) < 4 {
		return NotVMDK
	}
	switch string(first[:4]) {
	case MagicSparse:
		return SparseExtent
	case MagicCOWD:
		return COWDExtent
	}
	if probeText(first) {
		return DescriptorFile
	}
	return NotVMDK
}

// Probe reports whether first (the first ProbeBytes of a file, or all of a
// shorter one) starts a vmdk image or a vmdk descriptor file.
func Probe(first []byte) bool { return Detect(first) != NotVMDK }

// probeText follows qemu's vmdk_probe for files without a magic: comment lines
// and lines of spaces are skipped, and the first other line must be a version.
// Note that qemu does not skip an empty line ("\n" alone).
func probeText(b []byte) bool {
	p := 0
	for p < len(b) {
		switch b[p] {
		case '#':
			for p < len(b) && b[p] != '\n' {
				p++
			}
			p++
			continue
		case ' ':
			for p < len(b) && b[p] == ' ' {
				p++
			}
			if p < len(b) && b[p] == '\r' {
				p++
			}
			if p == len(b) || b[p] != '\n' {
				return false
			}
			p++
			continue
		}
		rest := b[p:]
		for _, v := range []string{"version=1", "version=2", "version=3"} {
			if bytes.HasPrefix(rest, []byte(v+"\n")) || bytes.HasPrefix(rest, []byte(v+"\r\n")) {
				return true
			}
		}
		return false
	}
	return false
}
