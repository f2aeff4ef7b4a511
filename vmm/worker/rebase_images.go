package worker

import (
	"instarfs/errcode"
	"instarfs/proto"
)

// rebaseChains are the images of a rebase as the worker discovered them.
type rebaseChains struct {
	// all are the images in the order they were opened: the overlay, its
	// old backing chain, then the new backing chain when it is not part of
	// the old one.
	all []*opened
	// old is the old backing chain, top first (none in unsafe mode).
	old []*opened
	// new is the new backing chain, top first: none when detaching, nor in
	// unsafe mode when the new backing file cannot be read.
	new []*opened
	// newInOld is the index in old of the new backing file (0 is the old
	// backing file), or -1 when the new backing is not part of the old
	// chain. The old chain's members above it are what the rebase drops.
	newInOld int
}

// rebaseImages opens the images of a rebase. The host hands over the overlay
// alone: the worker asks its broker for the old chain (safe mode), then for
// the new backing file and the chain below it.
func (s *session) rebaseImages(args *proto.RebaseArgs) (rebaseChains, error) {
	if !s.req.Broker {
		return rebaseChains{}, errcode.New(errcode.WorkerProtocol, "%s needs a broker", s.req.Op)
	}
	imgs, err := s.discover(!args.Unsafe)
	if err != nil {
		return rebaseChains{}, err
	}
	c := rebaseChains{old: imgs[1:], newInOld: -1}
	if args.Backing != "" {
		nb, err := s.openBacking(0, imgs[0], proto.OpenNewBacking)
		if args.Unsafe {
			imgs, err = s.unsafeNewBacking(imgs, nb, err, args)
		} else {
			imgs, err = s.newBackingChain(imgs, nb, err)
			if nb.same {
				c.newInOld = nb.index - 1
			}
		}
		if err != nil {
			return rebaseChains{}, err
		}
	}
	c.all = imgs
	c.new = imgs[1+len(c.old):]
	if c.newInOld >= 0 {
		c.new = c.old[c.newInOld:]
	}
	return c, nil
}

// newBackingChain opens the chain below the new backing file of a safe
// rebase, nb (or the error asking for it), appending it to imgs.
func (s *session) newBackingChain(imgs []*opened, nb backing, err error) ([]*opened, error) {
	switch {
	case err != nil:
		return nil, err
	case nb.same:
		return imgs, nil
	}
	for cur := nb.img; ; {
		imgs = append(imgs, cur)
		i := len(imgs) - 1
		if cur.info.BackingFilename == "" {
			return imgs, s.describe(i, &cur.info, imgs)
		}
		next, err := s.openBacking(i, cur, proto.OpenBacking)
		if err != nil {
			return nil, err
		}
		cur = next.img
	}
}

// unsafeNewBacking finishes the images of an unsafe rebase, whose new backing
// file is read only for its format (when -F is not given) and a vmdk
// parent's CID: a new backing file that does not exist is no error (the host
// warns), nor one that cannot be read when -F names its format. The chain
// below it is walked only to refuse a rebase that would make a loop; nothing
// else found there matters, as no data is read.
func (s *session) unsafeNewBacking(imgs []*opened, nb backing, err error, args *proto.RebaseArgs) ([]*opened, error) {
	switch {
	case errcode.Of(err) == errcode.BackingNotFound:
		return imgs, nil
	case err != nil && s.hostRefused(err):
		return nil, err
	case err != nil && args.BackingFormat == "":
		return nil, errcode.New(errcode.BackingFormatRequired, "the format of '%s' cannot be detected (%v); name it with -F", args.Backing, err)
	case err != nil:
		return imgs, nil
	}
	imgs = append(imgs, nb.img)
	for i, cur := len(imgs)-1, nb.img; cur.info.BackingFilename != ""; {
		next, err := s.openBacking(i, cur, proto.OpenBacking)
		if errcode.Of(err) == errcode.RebaseCreatesLoop {
			return nil, err
		}
		if err != nil {
			break
		}
		i, cur = next.index, next.img
	}
	return imgs, nil
}
