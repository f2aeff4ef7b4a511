// Command mkguest assembles the microvm guest for `make guest`: from a Debian
// kernel package unpacked with dpkg-deb -x, it writes the kernel (the ELF
// vmlinux decompressed from the bzImage, which QEMU boots by its PVH entry,
// or the bzImage itself when that fails) and the initramfs holding /init, the
// virtio modules and their dependencies, in load order.
//
//	mkguest -root DIR -init FILE -out DIR
package main

import (
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"instarfs/vmm/microvm"
	"instarfs/vmm/microvm/guestabi"
	"instarfs/vmm/microvm/initramfs"
)

// wanted are the modules the guest needs: the virtio-mmio transport of
// `-M microvm`, the block driver for the drives, and the console.
var wanted = []string{"virtio_mmio", "virtio_blk", "virtio_console"}

func main() {
	root := flag.String("root", "", "the unpacked kernel package")
	initPath := flag.String("init", "", "the static /init binary")
	out := flag.String("out", "", "the guest directory to write")
	flag.Parse()
	if err := run(*root, *initPath, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkguest:", err)
		os.Exit(1)
	}
}

func run(root, initPath, out string) error {
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return fmt.Errorf("want one boot/vmlinuz-* under %s, found %d", root, len(kernels))
	}
	release := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	mods, err := moduleFiles(filepath.Join(root, "lib", "modules", release))
	if err != nil {
		return err
	}
	order, err := loadOrder(mods, wanted)
	if err != nil {
		return err
	}
	initBin, err := os.ReadFile(initPath)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	w := initramfs.NewWriter(&buf)
	w.CharDev("/dev/console", 0o600, 5, 1)
	w.Dir("/proc", 0o555)
	w.File("/init", 0o755, initBin)
	var names []string
	for _, m := range order {
		data, err := os.ReadFile(mods[m])
		if err != nil {
			return err
		}
		name := filepath.Base(mods[m])
		names = append(names, name)
		w.File(filepath.Join(guestabi.ModulesDir, name), 0o644, data)
	}
	w.File(guestabi.ModulesOrder, 0o644, []byte(strings.Join(names, "\n")+"\n"))
	if err := w.Close(); err != nil {
		return err
	}
	kernel, err := os.ReadFile(kernels[0])
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	boot := "PVH vmlinux"
	if elf, err := vmlinux(kernel); err == nil {
		kernel = elf
	} else {
		boot = fmt.Sprintf("bzImage (%v)", err)
	}
	if err := os.WriteFile(filepath.Join(out, microvm.KernelFile), kernel, 0o644); err != nil {
		return err
	}
	os.Remove(filepath.Join(out, "vmlinuz")) // the name of earlier builds
	if err := os.WriteFile(filepath.Join(out, microvm.InitramfsFile), buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("guest: kernel %s as %s, modules %s, initramfs %d bytes\n", release, boot, strings.Join(order, " "), buf.Len())
	return nil
}

// moduleFiles maps each module name (underscores) to its file.
func moduleFiles(dir string) (map[string]string, error) {
	mods := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := moduleName(d.Name()); ok && !d.IsDir() {
			mods[name] = p
		}
		return nil
	})
	return mods, err
}

func moduleName(file string) (string, bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst"} {
		if strings.HasSuffix(file, ext) {
			return strings.ReplaceAll(strings.TrimSuffix(file, ext), "-", "_"), true
		}
	}
	return "", false
}

// loadOrder lists the wanted modules after their dependencies, which each
// module names in its .modinfo section ("depends=a,b"), the source depmod
// builds modules.dep from.
func loadOrder(mods map[string]string, wanted []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string) error
	visit = func(m string) error {
		switch state[m] {
		case 1:
			return fmt.Errorf("module %s depends on itself", m)
		case 2:
			return nil
		}
		file, ok := mods[m]
		if !ok {
			return fmt.Errorf("module %s is not in the kernel package (built in?)", m)
		}
		state[m] = 1
		deps, err := depends(file)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, m := range wanted {
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func depends(file string) ([]string, error) {
	if !strings.HasSuffix(file, ".ko") {
		return nil, fmt.Errorf("%s: only uncompressed modules are read", file)
	}
	f, err := elf.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s has no .modinfo", file)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			for _, d := range strings.Split(string(v), ",") {
				deps = append(deps, strings.ReplaceAll(d, "-", "_"))
			}
		}
	}
	sort.Strings(deps)
	return deps, nil
}
