package proto

// Format is the name of an image format, as qemu-img spells it.
type Format string

// The formats instarfs reads and writes.
const (
	Qcow2 Format = "qcow2"
	Vmdk  Format = "vmdk"
	Raw   Format = "raw"
)

// Formats lists the formats in the order messages and flags name them.
var Formats = []Format{Qcow2, Vmdk, Raw}

// Valid reports whether f is one of Formats.
func (f Format) Valid() bool {
	return f == Qcow2 || f == Vmdk || f == Raw
}

// FormatNames returns the names of Formats, for a command line's choices.
func FormatNames() []string {
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return names
}

// CacheModes are the cache modes commit's -t accepts, as qemu-img names
// them.
var CacheModes = []string{"none", "writeback", "writethrough", "directsync", "unsafe"}
