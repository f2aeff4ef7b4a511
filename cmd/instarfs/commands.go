package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
	"instarfs/proto"
)

func (a *app) infoCommand() {
	var (
		file         string
		format       string
		output       string
		backingChain bool
		forceShare   bool
	)
	c := a.Command("info", "Show what an image is (qemu-img info).")
	c.Flag("backing-chain", "Describe every image of the backing chain.").BoolVar(&backingChain)
	forceShareFlag(c, &forceShare)
	c.Flag("format", "The image's format (detected when omitted; raw only with a partition table).").Short('f').EnumVar(&format, proto.FormatNames()...)
	c.Flag("output", "human or json.").Default("human").EnumVar(&output, "human", "json")
	c.Arg("file", "The image.").Required().StringVar(&file)
	a.actions[c.FullCommand()] = func() int {
		return a.withOpener(func(ctx context.Context, o *ctl.Opener) int {
			infos, err := ctl.InfoFor(ctx, o, file, format, backingChain, forceShare)
			if err != nil {
				return fail(err)
			}
			if output == "json" {
				os.Stdout.Write(ctl.InfoJSON(infos, backingChain))
			} else {
				os.Stdout.Write(ctl.InfoHuman(infos))
			}
			return 0
		}, file, fail)
	}
}

func (a *app) mapCommand() {
	var file, format, output, startOffset, maxLength string
	var forceShare bool
	c := a.Command("map", "Show where an image's data lives, through its backing chain (qemu-img map).")
	forceShareFlag(c, &forceShare)
	c.Flag("format", "The image's format (detected when omitted).").Short('f').EnumVar(&format, proto.FormatNames()...)
	c.Flag("output", "human, json, or svg (a picture of the chain).").Default("human").EnumVar(&output, "human", "json", "svg")
	c.Flag("start-offset", "Map from this guest offset (suffixes K, M, G...).").StringVar(&startOffset)
	c.Flag("max-length", "Map at most this many bytes (suffixes K, M, G...).").StringVar(&maxLength)
	c.Arg("file", "The image.").Required().StringVar(&file)
	a.actions[c.FullCommand()] = func() int {
		start, err := sizeFlag(startOffset, 0, "start offset")
		if err != nil {
			return fail(err)
		}
		length, err := sizeFlag(maxLength, -1, "max length")
		if err != nil {
			return fail(err)
		}
		return a.withOpener(func(ctx context.Context, o *ctl.Opener) int {
			m, err := ctl.Map(ctx, o, file, format, forceShare)
			if err != nil {
				return fail(err)
			}
			if startOffset != "" || maxLength != "" {
				m.Window(start, length)
			}
			switch output {
			case "json":
				os.Stdout.Write(m.JSON())
				return 0
			case "svg":
				os.Stdout.Write(m.SVG())
				return 0
			}
			out, err := m.Human()
			if err != nil {
				return fail(err)
			}
			os.Stdout.Write(out)
			return 0
		}, file, fail)
	}
}

// sizeFlag parses a size flag as qemu-img's cvtnum does; empty gives def.
func sizeFlag(v string, def int64, what string) (int64, error) {
	if v == "" {
		return def, nil
	}
	n, problem := ctl.ParseSize(v)
	if problem != "" {
		return 0, errcode.New(errcode.BadArguments, "Invalid %s specified: %q (%s). You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.", what, v, strings.TrimSuffix(problem, ":"))
	}
	return n, nil
}

func (a *app) checkCommand() {
	var file, format, output, repair string
	var quiet, forceShare bool
	c := a.Command("check", "Check an image's metadata for consistency (qemu-img check); with -r, repair it. Exit status: 0 clean, 1 the check failed, 2 corrupt, 3 leaks only, 63 no checks for this format.")
	forceShareFlag(c, &forceShare)
	c.Flag("format", "The image's format (detected when omitted).").Short('f').EnumVar(&format, proto.FormatNames()...)
	c.Flag("output", "human or json.").Default("human").EnumVar(&output, "human", "json")
	c.Flag("repair", "Repair the image: leaks frees leaked clusters, all also fixes refcount errors and the corruptions qemu-img repairs.").Short('r').EnumVar(&repair, "leaks", "all")
	c.Flag("quiet", "Print no report on stdout (the problems are still listed on stderr).").Short('q').BoolVar(&quiet)
	c.Arg("file", "The image.").Required().StringVar(&file)
	a.actions[c.FullCommand()] = func() int {
		return a.withOpener(func(ctx context.Context, o *ctl.Opener) int {
			if repair != "" && forceShare {
				return fail(errcode.New(errcode.BadArguments, "force share (-U) cannot be used with -r: a repair writes the image"))
			}
			if repair != "" {
				return showRepair(ctx, o, file, format, repair, output, quiet)
			}
			r, err := ctl.Check(ctx, o, file, format, forceShare)
			if err != nil {
				return fail(err)
			}
			if err := r.Unsupported(); err != nil {
				fail(err) // qemu-img prints this on stderr alone
				return r.ExitCode()
			}
			printReport(r.Messages, r, output, quiet)
			return r.ExitCode()
		}, file, fail)
	}
}

// report is what check prints on stdout, in either form.
type report interface {
	JSON() []byte
	Human() []byte
}

// printReport prints check's problem lines on stderr and its report on
// stdout (none with -q), as qemu-img check does.
func printReport(messages []string, r report, output string, quiet bool) {
	for _, m := range messages {
		fmt.Fprintln(os.Stderr, m)
	}
	switch {
	case quiet:
	case output == "json":
		os.Stdout.Write(r.JSON())
	default:
		os.Stdout.Write(r.Human())
	}
}

// showRepair runs check -r and prints its outcome as qemu-img does.
func showRepair(ctx context.Context, o *ctl.Opener, file, format, mode, output string, quiet bool) int {
	r, err := ctl.Repair(ctx, o, file, format, mode)
	if err != nil {
		return fail(err)
	}
	if err := r.Err(); err != nil {
		printReport(r.Messages(), r, output, true)
		return fail(err)
	}
	printReport(r.Messages(), r, output, quiet)
	return r.ExitCode()
}

// forceShareFlag adds qemu-img's -U/--force-share to a reading command.
func forceShareFlag(c *kingpin.CmdClause, v *bool) {
	c.Flag("force-share", "Open the image read-only without QEMU's locks, as qemu-img -U does: an image a running VM writes can be read (what is read may be changing).").Short('U').BoolVar(v)
}

// withOpener runs fn with an Opener whose policy allows the directory of file
// and every --allow-dir, and a context cancelled by SIGINT or SIGTERM. Once
// cancelled, fn has cancelGrace to return; after that the command ends
// anyway (every write instarfs makes is crash-safe). What fails before fn
// runs, or fn's overdue end, is reported with failed.
func (a *app) withOpener(fn func(context.Context, *ctl.Opener) int, file string, failed func(error) int) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go cancelOnSignal(ctx, cancel)
	sb, err := a.newSandbox()
	if err != nil {
		return failed(err)
	}
	policy, err := chainmodel.NewPolicy(append([]string{dirOf(file)}, a.global.allowDirs...)...)
	if err != nil {
		return failed(err)
	}
	// The roots stay open until the process exits: fn may still run after a
	// cancelled command gave up waiting for it.
	done := make(chan int, 1)
	go func() { done <- fn(ctx, &ctl.Opener{Sandbox: sb, Policy: policy}) }()
	select {
	case code := <-done:
		return code
	case <-ctx.Done():
	}
	select {
	case code := <-done:
		return code
	case <-time.After(cancelGrace):
		return failed(errcode.New(errcode.Cancelled, "interrupted; '%s' was left as a crash would leave it", file))
	}
}

// cancelOnSignal cancels ctx on SIGINT or SIGTERM until ctx is done. A
// command runs it on a goroutine of its own, off the command's path: os/signal
// starts threads of its own (about 0.2 ms of a small command). Until the
// handler is in place, normally well before a worker has started, a signal
// ends the process as it ends any program; a worker that has started dies
// with it (its parent-death signal), and leaves its images as a crash would.
func cancelOnSignal(ctx context.Context, cancel context.CancelFunc) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	select {
	case <-sigs:
		cancel()
	case <-ctx.Done():
	}
}

// cancelGrace is how long a cancelled command may take to stop.
const cancelGrace = 500 * time.Millisecond

// runOperation runs a changing operation (name: rebase, commit) on file and
// prints its outcome as qemu-img does: progress on stdout with -p (on stderr
// with --output=json, which stdout carries), the envelope with --output=json,
// done on success unless -q.
func (a *app) runOperation(name, file, output string, quiet, progress bool, done string,
	op func(context.Context, *ctl.Opener, ctl.Progress) (*ctl.Envelope, error)) int {
	return a.withOpener(func(ctx context.Context, o *ctl.Opener) int {
		var show ctl.Progress
		out := os.Stdout
		if output == "json" {
			out = os.Stderr
		}
		if progress && !quiet {
			show = func(f float64) { fmt.Fprintf(out, "    (%.2f/100%%)\r", f*100) }
			show(0)
		}
		env, err := ctl.Run(ctx, name, file, o.Sandbox, func(ctx context.Context) (*ctl.Envelope, error) {
			return op(ctx, o, show)
		})
		if show != nil {
			if err == nil {
				show(1)
			}
			fmt.Fprintln(out)
		}
		for _, w := range env.Warnings {
			fmt.Fprintf(os.Stderr, "instarfs: warning: %s\n", w)
		}
		if output == "json" {
			os.Stdout.Write(env.JSON())
		}
		if err != nil {
			return fail(err)
		}
		if output == "human" && !quiet {
			fmt.Println(done)
		}
		return 0
	}, file, func(err error) int { return refuse(name, file, output, err) })
}

// refuse reports an operation that failed before it ran (or was given up on):
// as fail does, and with --output=json also as the envelope the operation
// would have printed.
func refuse(op, file, output string, err error) int {
	if output == "json" {
		os.Stdout.Write(ctl.Failed(op, file, err).JSON())
	}
	return fail(err)
}

// fail prints err as qemu-img prints errors and returns exit status 1.
func fail(err error) int {
	fmt.Fprintf(os.Stderr, "instarfs: %s: %v\n", errcode.Of(err), err)
	return 1
}
