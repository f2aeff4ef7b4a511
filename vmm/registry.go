package vmm

import (
	"sort"
	"strings"
	"sync"

	"instarfs/errcode"
)

// Auto is the --sandbox value that lets instarfs choose the backend.
const Auto = "auto"

// DefaultBackend is the backend Auto selects.
const DefaultBackend = "jail"

var (
	registryMu sync.Mutex
	registry   = map[string]func() (Sandbox, error){}
)

// Register makes a sandbox backend available to New under name. Backend
// packages call it from init; registering a name twice panics.
func Register(name string, open func() (Sandbox, error)) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("vmm: sandbox backend " + name + " registered twice")
	}
	registry[name] = open
}

// Backends returns the registered backend names, sorted.
func Backends() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	names := make([]string, 0, len(registry))
	for name := range registry {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// New returns the sandbox named by a --sandbox value: "auto" (or empty) selects
// DefaultBackend. An unknown name is a BAD_ARGUMENTS error; a backend that
// cannot run here returns SANDBOX_UNAVAILABLE.
func New(name string) (Sandbox, error) {
	if name == "" || name == Auto {
		name = DefaultBackend
	}
	registryMu.Lock()
	open, ok := registry[name]
	registryMu.Unlock()
	if !ok {
		return nil, errcode.New(errcode.BadArguments, "unknown sandbox %q (known: %s)",
			name, strings.Join(append([]string{Auto}, Backends()...), ", "))
	}
	return open()
}

// Accelerated is implemented by a backend whose worker runs in a virtual
// machine: Accelerator names what runs the guest ("kvm" or "tcg").
type Accelerated interface {
	Accelerator() string
}

// Accelerator returns the accelerator of sb (seen through Limit), or "" for a
// backend that runs no virtual machine.
func Accelerator(sb Sandbox) string {
	if l, ok := sb.(*limited); ok {
		sb = l.sb
	}
	if a, ok := sb.(Accelerated); ok {
		return a.Accelerator()
	}
	return ""
}
