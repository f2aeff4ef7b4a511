package jail

// Hooks for the tests of package jail_test, which run the test worker of
// vmm/sandboxtest/testworker (a package that imports this one).

// NewAt returns a jail that runs every worker at level (LevelUnknown: decide
// as New does) and tells started, when set, each worker's pid.
func NewAt(level Level, started func(pid int)) *Sandbox {
	return &Sandbox{forceLevel: level, started: started}
}

// Unstartable returns a jail and a Plain whose worker executable does not
// exist.
func Unstartable() (*Sandbox, *Plain) {
	const missing = "/nonexistent/instarfs-worker"
	return &Sandbox{path: missing}, &Plain{path: missing}
}

var (
	IsWorkerID  = isWorkerID
	StatusField = statusField
)

func isWorkerID(id int) bool { return id >= workerIDFirst && id < workerIDFirst+workerIDCount }
