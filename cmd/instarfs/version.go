package main

import (
	"fmt"
	"runtime/debug"
)

// version and commit are set when the Makefile builds the binary
// (-ldflags "-X main.version=… -X main.commit=…").
var (
	version = "unreleased"
	commit  = ""
)

// versionLine is what --version prints: the version and the commit the binary
// was built from (from the Go toolchain's build information when the
// Makefile did not set it).
func versionLine() string {
	c := commit
	if c == "" {
		c = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			var rev, dirty string
			for _, s := range bi.Settings {
				switch {
				case s.Key == "vcs.revision":
					rev = s.Value
				case s.Key == "vcs.modified" && s.Value == "true":
					dirty = "-dirty"
				}
			}
			if rev != "" {
				c = rev + dirty
			}
		}
	}
	return fmt.Sprintf("instarfs %s (commit %s)", version, c)
}
