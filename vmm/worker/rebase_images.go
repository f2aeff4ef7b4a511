package worker

import (
	"instarfs/errcode"
	"instarfs/proto"
)

// rebaseImages opens the images of a rebase, in the order proto.RebaseArgs
// describes: the overlay, its old backing chain (safe mode), the new backing
// chain. A worker with a broker is handed the overlay alone: it asks for the
// old chain, then for the new backing file and the chain below it, and sets
// args.OldCount and args.NewInOld from what the host answered.
func (s *session) rebaseImages(args *proto.RebaseArgs) ([]*opened, error) {
	if !s.req.Broker {
		n := len(s.req.Images)
		if args.OldCount < 0 || args.OldCount > n-1 || args.NewInOld >= args.OldCount || args.NewInOld < -1 {
			return nil, errcode.New(errcode.WorkerProtocol, "rebase: bad image counts (old %d, new in old %d, %d images)", args.OldCount, args.NewInOld, n)
		}
		return s.openImages()
	}
	imgs, err := s.discover(!args.Unsafe)
	if err != nil {
		return nil, err
	}
	args.OldCount, args.NewInOld = len(imgs)-1, -1
	if args.Backing == "" {
		return imgs, nil
	}
	nb, err := s.openBacking(0, imgs[0], proto.OpenNewBacking)
	if args.Unsafe {
		return s.unsafeNewBacking(imgs, nb, err, args)
	}
	switch {
	case err != nil:
		return nil, err
	case nb.same:
		args.NewInOld = nb.index - 1
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
