// Command instarfs does qemu-img's rebase, commit, info, map and check on qcow2,
// vmdk and raw images inside a sandbox, and mounts a directory of images as a
// filesystem whose control files run those operations.
package main

import (
	"os"
	"path/filepath"

	"github.com/alecthomas/kingpin/v2"

	"instarfs/errcode"
	"instarfs/proto"
	"instarfs/vmm"
	"instarfs/vmm/microvm"
)

func main() {
	vmm.UseWorker(workerPath())
	app := newApp()
	os.Exit(app.run(os.Args[1:]))
}

// workerPath returns where the worker executable is: proto.WorkerArg0 in the
// directory of this executable. When that cannot be known, the bare name,
// which UseWorker refuses, makes every worker start fail, naming what was
// looked for.
func workerPath() string { return siblingPath(proto.WorkerArg0) }

// siblingPath returns the path of the executable name in the directory of
// this one, or name alone when that directory cannot be known. On Linux
// os.Executable is the path the kernel resolved, so a symbolic link to
// instarfs finds the executables next to the link's target.
func siblingPath(name string) string {
	exe, err := os.Executable()
	if err != nil {
		return name
	}
	return filepath.Join(filepath.Dir(exe), name)
}

// app holds the parsed command line.
type app struct {
	*kingpin.Application
	global  globalFlags
	actions map[string]func() int
}

type globalFlags struct {
	logLevel  string
	logFormat string
	sandbox   string
	accel     string
	allowDirs []string

	// qemu-img flags that are refused (see refuseQemuOnly).
	imageOpts bool
	objects   []string

	// wrapSandbox, a test hook, wraps the sandbox every command uses.
	wrapSandbox func(vmm.Sandbox) vmm.Sandbox
}

func newApp() *app {
	a := &app{
		Application: kingpin.New("instarfs", "Sandboxed qemu-img rebase, commit, info, map and check for qcow2, vmdk and raw images."),
		actions:     map[string]func() int{},
	}
	a.HelpFlag.Short('h')
	a.Version(versionLine())
	a.UsageWriter(os.Stdout) // --help and --version answer on stdout
	a.Flag("log-level", "Log level: debug, info, warn, error.").Default("warn").EnumVar(&a.global.logLevel, "debug", "info", "warn", "error")
	a.Flag("log-format", "Log format on stderr: text or json.").Default("text").EnumVar(&a.global.logFormat, "text", "json")
	a.Flag("sandbox", "Where image bytes are parsed: auto, jail or microvm.").Default("auto").EnumVar(&a.global.sandbox, "auto", "jail", "microvm")
	a.Flag("accel", "What runs the microvm guest: kvm (the default) or tcg (emulation, for tests: no security boundary).").EnumVar(&a.global.accel, microvm.KVM, microvm.TCG)
	a.Flag("allow-dir", "Another directory backing files may be opened from (repeatable).").StringsVar(&a.global.allowDirs)
	a.Flag("image-opts", "Refused: qemu-img's protocol options are never honoured.").Hidden().BoolVar(&a.global.imageOpts)
	a.Flag("object", "Refused: qemu-img's objects are never used.").Hidden().StringsVar(&a.global.objects)
	a.infoCommand()
	a.mapCommand()
	a.checkCommand()
	a.commitCommand()
	a.rebaseCommand()
	a.sandboxCheckCommand()
	a.mountCommand()
	return a
}

// newSandbox returns the backend --sandbox and --accel name.
func (a *app) newSandbox() (vmm.Sandbox, error) {
	sb, err := vmm.New(a.global.sandbox)
	if err != nil {
		return nil, err
	}
	if a.global.accel != "" {
		m, ok := sb.(*microvm.Sandbox)
		if !ok {
			return nil, errcode.New(errcode.BadArguments, "--accel applies to --sandbox=microvm, not to %s", sb.Name())
		}
		m.Accel = a.global.accel
	}
	if a.global.wrapSandbox != nil {
		sb = a.global.wrapSandbox(sb)
	}
	return sb, nil
}

func (a *app) run(args []string) int {
	if len(args) == 0 {
		a.UsageWriter(os.Stderr)
		a.Usage(nil)
		return fail(errcode.New(errcode.BadArguments, "no command given; try 'instarfs --help'"))
	}
	cmd, err := a.Parse(args)
	if err != nil {
		return fail(errcode.New(errcode.BadArguments, "%v", err))
	}
	setupLogging(a.global.logLevel, a.global.logFormat)
	if err := a.refuseQemuOnly(); err != nil {
		return fail(err)
	}
	return a.actions[cmd]()
}

// refuseQemuOnly refuses the qemu-img flags that would make instarfs read
// files, protocols or secrets it never honours, rather than silently
// ignoring them.
func (a *app) refuseQemuOnly() error {
	switch {
	case a.global.imageOpts:
		return errcode.New(errcode.BadArguments, "--image-opts is not supported: it turns the file name into qemu block-layer options (drivers, protocols, file.*) that instarfs never honours; give the image's path")
	case len(a.global.objects) > 0:
		return errcode.New(errcode.BadArguments, "--object is not supported: it defines qemu objects (secrets, TLS credentials, throttle groups) that instarfs never uses")
	}
	return nil
}
