package ctl

import (
	"strings"
	"testing"
)

// TestUsageParses: every form a control file's usage shows is accepted by its
// parser, with the optional flags left out and put in.
func TestUsageParses(t *testing.T) {
	parse := map[string]func(string) error{
		"rebase": func(l string) error { _, err := ParseRebase(l); return err },
		"commit": func(l string) error { _, err := ParseCommit(l); return err },
		"repair": func(l string) error { _, err := ParseRepair(l); return err },
	}
	fill := strings.NewReplacer("BACKING", "b.qcow2", "BASE", "base.qcow2", "FMT", "qcow2", "RATE", "1M", "CACHE", "none")
	for op, p := range parse {
		lines := strings.Split(strings.TrimSuffix(Usage(op), "\n"), "\n")
		if len(lines) < 2 {
			t.Fatalf("%s: usage %q", op, Usage(op))
		}
		for _, l := range lines {
			form, _, ok := strings.Cut(l, "#")
			if !ok {
				t.Errorf("%s: %q has no comment", op, l)
			}
			form = fill.Replace(form)
			with := strings.NewReplacer("[", "", "]", "").Replace(form)
			without := form
			for strings.Contains(without, "[") {
				i := strings.Index(without, "[")
				without = without[:i] + without[i+strings.Index(without[i:], "]")+1:]
			}
			for _, line := range []string{with, without} {
				if err := p(line); err != nil {
					t.Errorf("%s: usage form %q: %v", op, line, err)
				}
			}
		}
	}
}
