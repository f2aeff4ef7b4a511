package main

import (
	"context"

	"instarfs/ctl"
	"instarfs/proto"
)

func (a *app) commitCommand() {
	var (
		file, format, base, output, cache, rate string
		drop, progress, quiet                   bool
	)
	c := a.Command("commit", "Commit an image's data into its backing file, or into BASE further down its chain (qemu-img commit).")
	c.Flag("format", "The image's format (detected when omitted).").Short('f').EnumVar(&format, proto.FormatNames()...)
	c.Flag("base", "The image of the backing chain to commit into (implies -d); default the immediate backing file.").Short('b').StringVar(&base)
	c.Flag("drop", "Leave the image unchanged instead of emptying it.").Short('d').BoolVar(&drop)
	c.Flag("progress", "Show progress on stdout, as qemu-img does (on stderr with --output=json).").Short('p').BoolVar(&progress)
	c.Flag("quiet", "Print nothing on success.").Short('q').BoolVar(&quiet)
	c.Flag("rate", "Limit the write rate into the base, in bytes per second (suffixes K, M, G...).").Short('r').StringVar(&rate)
	c.Flag("cache", "Cache mode for the base: none, writeback, writethrough, directsync or unsafe.").Short('t').EnumVar(&cache, proto.CacheModes...)
	c.Flag("output", "human or json.").Default("human").EnumVar(&output, "human", "json")
	c.Arg("file", "The image.").Required().StringVar(&file)
	a.actions[c.FullCommand()] = func() int {
		req := ctl.CommitRequest{Base: base, Format: format, Drop: drop, Cache: cache}
		if rate != "" {
			r, err := ctl.ParseRate(rate)
			if err != nil {
				return refuse("commit", file, output, err)
			}
			req.Rate = r
		}
		return a.runOperation("commit", file, output, quiet, progress, "Image committed.",
			func(ctx context.Context, o *ctl.Opener, show ctl.Progress) (*ctl.Envelope, error) {
				return ctl.Commit(ctx, o, file, req, show)
			})
	}
}
