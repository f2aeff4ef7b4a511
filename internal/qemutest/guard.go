package qemutest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The guard keeps qemu inside a test's scratch directory. qemu opens, and
// may write through, every file an image names: its backing file, a qcow2
// external data file, a vmdk descriptor's extents. Before a run, the guard
// reads those names from each image among the arguments (following the
// chain) and refuses the run when one resolves outside the image's scratch
// directory (the directory below the system's temporary directory that holds
// it — a test's t.TempDir() or the integration tests' image directory — or,
// for an image elsewhere, its own directory) or uses a protocol prefix.

// maxDepth bounds how far the guard follows a chain.
const maxDepth = 32

// guard returns an error when qemu, run with args in dir, could open a
// file outside the scratch directory of an image it is given.
func guard(dir string, args []string) error {
	base, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	unsafe := slices.Contains(args, "-u")
	// Every other argument that names a regular file is taken for an image:
	// an option's value (qcow2, 64M, leaks) is not one.
	var positional, backing []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-c":
			i++ // a qemu-io command
		case a == "-b" || a == "-B":
			if i+1 < len(args) {
				i++
				if !unsafe || a == "-B" {
					backing = append(backing, args[i])
				}
			}
		case a == "-o":
			if i+1 < len(args) {
				i++
				for _, opt := range strings.Split(args[i], ",") {
					k, v, _ := strings.Cut(opt, "=")
					if k == "backing_file" && !unsafe || k == "data_file" {
						backing = append(backing, v)
					}
				}
			}
		case strings.HasPrefix(a, "json:"):
			if err := guardJSON(a[len("json:"):], base); err != nil {
				return err
			}
		case strings.HasPrefix(a, "-"):
		default:
			positional = append(positional, a)
		}
	}
	seen := map[string]bool{}
	for _, a := range positional {
		p := abs(base, a)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			if err := guardImage(p, true, 0, seen); err != nil {
				return err
			}
		}
	}
	// A new backing name is resolved against the image it is written into.
	for _, name := range backing {
		for _, a := range positional {
			img := abs(base, a)
			if err := guardName(name, img, scratch(img), 0, seen); err != nil {
				return err
			}
		}
	}
	return nil
}

// guardJSON checks a json: filename: its file, and its backing chain unless
// it sets "backing": null.
func guardJSON(spec, base string) error {
	var v map[string]json.RawMessage
	if err := json.Unmarshal([]byte(spec), &v); err != nil {
		return fmt.Errorf("json: filename %s: %v", spec, err)
	}
	var file struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal(v["file"], &file.Filename); err != nil {
		if err := json.Unmarshal(v["file"], &file); err != nil || file.Filename == "" {
			return fmt.Errorf("json: filename %s: no file name the guard understands", spec)
		}
	}
	b, ok := v["backing"]
	withBacking := !ok || string(b) != "null"
	return guardImage(abs(base, file.Filename), withBacking, 0, map[string]bool{})
}

// guardImage checks the names the image at path holds, and theirs in turn.
func guardImage(path string, withBacking bool, depth int, seen map[string]bool) error {
	if seen[path] || depth > maxDepth {
		return nil
	}
	seen[path] = true
	backing, others := namesIn(path)
	if withBacking {
		others = append(others, backing...)
	}
	root := scratch(path)
	for _, name := range others {
		if err := guardName(name, path, root, depth, seen); err != nil {
			return err
		}
	}
	return nil
}

// guardName checks one name image holds, resolved as qemu resolves it:
// against the image's directory.
func guardName(name, image, root string, depth int, seen map[string]bool) error {
	if name == "" {
		return nil
	}
	if i := strings.IndexByte(name, ':'); i >= 0 && !strings.Contains(name[:i], "/") {
		return fmt.Errorf("qemu would open %s, which names %q: a protocol prefix; the guard refuses it", image, name)
	}
	p := abs(filepath.Dir(image), name)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	if !within(root, p) {
		return fmt.Errorf("qemu would open %s, which names %q (%s), outside its scratch directory %s", image, name, p, root)
	}
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
		return guardImage(p, true, depth+1, seen)
	}
	return nil
}

func abs(dir, name string) string {
	if filepath.IsAbs(name) {
		return filepath.Clean(name)
	}
	return filepath.Join(dir, name)
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// scratch is the scratch directory of the file at path.
func scratch(path string) string {
	p := path
	if r, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
		p = filepath.Join(r, filepath.Base(path))
	}
	tmp := os.TempDir()
	if r, err := filepath.EvalSymlinks(tmp); err == nil {
		tmp = r
	}
	if rel, err := filepath.Rel(tmp, p); err == nil && rel != "." && within(tmp, p) {
		first, _, _ := strings.Cut(rel, "/")
		if first != rel {
			return filepath.Join(tmp, first)
		}
	}
	return filepath.Dir(p)
}

// namesIn returns the backing file name and the other file names (a qcow2
// external data file, a vmdk descriptor file's extents) that the image at
// path holds. What it cannot read, qemu cannot open either.
func namesIn(path string) (backing, others []string) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	head := make([]byte, 64<<10)
	n, _ := f.ReadAt(head, 0)
	head = head[:n]
	readAt := func(off uint64, n uint64) []byte {
		if off == 0 || n == 0 || off > 1<<40 {
			return nil
		}
		b := make([]byte, min(n, 1<<20))
		k, _ := f.ReadAt(b, int64(off))
		return b[:k]
	}
	switch {
	case bytes.HasPrefix(head, []byte("QFI\xfb")) && len(head) >= 72:
		be := binary.BigEndian
		if name := readAt(be.Uint64(head[8:]), uint64(be.Uint32(head[16:]))); name != nil {
			backing = append(backing, string(name))
		}
		off := uint64(72)
		if be.Uint32(head[4:]) >= 3 && len(head) >= 104 {
			off = uint64(be.Uint32(head[100:]))
		}
		for i := 0; i < 1024 && off+8 <= uint64(len(head)); i++ {
			typ, n := be.Uint32(head[off:]), uint64(be.Uint32(head[off+4:]))
			if typ == 0 {
				break
			}
			if typ == 0x44415441 { // the external data file
				end := min(off+8+n, uint64(len(head)))
				others = append(others, string(head[off+8:end]))
			}
			off += 8 + (n+7)&^7
		}
	case bytes.HasPrefix(head, []byte("KDMV")) && len(head) >= 44:
		le := binary.LittleEndian
		desc := readAt(le.Uint64(head[28:])*512, le.Uint64(head[36:])*512)
		backing, _ = descriptorNames(desc)
	default:
		// A descriptor file: qemu probes text with a version= line as vmdk.
		backing, others = descriptorNames(head)
	}
	return backing, others
}

// descriptorNames reads a vmdk descriptor's parent and extent file names.
func descriptorNames(desc []byte) (parent, extents []string) {
	if i := bytes.IndexByte(desc, 0); i >= 0 {
		desc = desc[:i]
	}
	sc := bufio.NewScanner(bytes.NewReader(desc))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "parentFileNameHint="); ok {
			parent = append(parent, strings.Trim(strings.TrimSpace(v), `"`))
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 || fields[0] != "RW" && fields[0] != "RDONLY" && fields[0] != "NOACCESS" {
			continue
		}
		if _, rest, ok := strings.Cut(line, `"`); ok {
			name, _, _ := strings.Cut(rest, `"`)
			extents = append(extents, name)
		}
	}
	return parent, extents
}
