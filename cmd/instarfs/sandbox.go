package main

import (
	"context"
	"encoding/json"
	"fmt"

	"instarfs/vmm/jail"
	"instarfs/vmm/microvm"
)

func (a *app) sandboxCheckCommand() {
	var output string
	c := a.Command("sandbox-check", "Report which sandbox layers this host offers, and run probes inside a real worker (with --sandbox=microvm: which accelerator boots the guest, and how fast). Exits 1 if any check fails.")
	c.Flag("output", "human or json.").Default("human").EnumVar(&output, "human", "json")
	a.actions[c.FullCommand()] = func() int {
		sb, err := a.newSandbox()
		if err != nil {
			return fail(err)
		}
		if m, ok := sb.(*microvm.Sandbox); ok {
			r := microvm.Check(context.Background(), m)
			return printCheck(output, r, r.OK)
		}
		r, err := jail.SandboxCheck(context.Background(), sb)
		if err != nil {
			return fail(err)
		}
		return printCheck(output, r, r.OK)
	}
}

// printCheck prints a sandbox-check report and returns the exit status.
func printCheck(output string, r fmt.Stringer, ok bool) int {
	if output == "json" {
		b, _ := json.MarshalIndent(r, "", "    ")
		fmt.Printf("%s\n", b)
	} else {
		fmt.Print(r.String())
	}
	if !ok {
		return 1
	}
	return 0
}
