package main

import (
	"context"
	"encoding/json"
	"fmt"

	"instarfs/vmm/jail"
)

func (a *app) sandboxCheckCommand() {
	var output string
	c := a.Command("sandbox-check", "Report which sandbox layers this host offers, and run probes inside a real worker. Exits 1 if any probe is not refused.")
	c.Flag("output", "human or json.").Default("human").EnumVar(&output, "human", "json")
	a.actions[c.FullCommand()] = func() int {
		sb, err := a.newSandbox()
		if err != nil {
			return fail(err)
		}
		r, err := jail.SandboxCheck(context.Background(), sb)
		if err != nil {
			return fail(err)
		}
		if output == "json" {
			b, _ := json.MarshalIndent(r, "", "    ")
			fmt.Printf("%s\n", b)
		} else {
			fmt.Print(r.String())
		}
		if !r.OK {
			return 1
		}
		return 0
	}
}
