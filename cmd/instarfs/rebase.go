package main

import (
	"context"

	"instarfs/ctl"
	"instarfs/errcode"
	"instarfs/proto"
)

func (a *app) rebaseCommand() {
	var (
		file, format, backing, backingFormat, output string
		unsafe, progress, quiet, backingSet          bool
	)
	c := a.Command("rebase", "Change the backing file of an image (qemu-img rebase). Safe mode first copies whatever would read differently; -u changes only the header.")
	c.Flag("format", "The image's format (detected when omitted).").Short('f').EnumVar(&format, proto.FormatNames()...)
	c.Flag("backing", "The new backing file, stored verbatim and resolved relative to the image's directory; \"\" detaches.").Short('b').IsSetByUser(&backingSet).StringVar(&backing)
	c.Flag("backing-format", "The new backing file's format (detected from its magic when omitted; raw is never inferred).").Short('F').EnumVar(&backingFormat, proto.FormatNames()...)
	c.Flag("unsafe", "Change only the backing file name and format in the header, copying nothing.").Short('u').BoolVar(&unsafe)
	c.Flag("progress", "Show progress on stdout, as qemu-img does (on stderr with --output=json).").Short('p').BoolVar(&progress)
	c.Flag("quiet", "Print nothing on success.").Short('q').BoolVar(&quiet)
	c.Flag("output", "human or json.").Default("human").EnumVar(&output, "human", "json")
	c.Arg("file", "The image.").Required().StringVar(&file)
	a.actions[c.FullCommand()] = func() int {
		if !backingSet && !unsafe {
			return refuse("rebase", file, output, errcode.New(errcode.BadArguments, "Must specify backing file (-b) or use unsafe mode (-u)"))
		}
		req := ctl.RebaseRequest{Backing: backing, BackingFormat: backingFormat, Format: format, Unsafe: unsafe}
		done := "Image rebased."
		if req.Backing == "" {
			done = "Image detached."
		}
		return a.runOperation("rebase", file, output, quiet, progress, done,
			func(ctx context.Context, o *ctl.Opener, show ctl.Progress) (*ctl.Envelope, error) {
				return ctl.Rebase(ctx, o, file, req, show)
			})
	}
}
