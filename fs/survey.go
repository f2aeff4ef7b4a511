package fs

import (
	"context"
	"fmt"
	"strings"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
)

// surveyed makes the document of kind for the image at rel together with all
// the others of its chain (chain.json, map.json, map.svg, check.json) from
// one worker run (ctl.SurveyChain), each cached by the identities of every
// file of the chain: a chain whose files are all unchanged since (the probe
// cache describes them) is answered from the cache without a worker. The run
// leaves the top's description in the probe cache, which info.json is made
// from (generate). ok is false when the survey cannot be made (a chain that
// does not open whole, a lock another process holds): the caller makes the
// document alone.
func (f *FS) surveyed(ctx context.Context, kind int, rel string, id chainmodel.FileID, format string) ([]byte, bool, error) {
	o := f.cfg.Opener
	opts := ctl.OpenOptions{Format: format, Want: &id}
	slot := genSlot{kind, id}
	if c := o.KnownChain(rel, opts); c != nil {
		key := chainKey(c)
		c.Close()
		if v, hit := f.cfg.Cache.Get(slot); hit && v.(genCacheEntry).key == key {
			return v.(genCacheEntry).data, true, v.(genCacheEntry).err
		}
	}
	s, err := ctl.SurveyChain(ctx, o, rel, opts, f.cfg.MaxDocument)
	if err != nil {
		return nil, false, nil
	}
	defer s.Close()
	key := chainKey(s.Chain)
	type doc struct {
		data []byte
		err  error
	}
	docs := map[int]doc{}
	// Refuse what is certainly too large before rendering it: a chain of
	// images with 65,536 snapshots each renders to hundreds of megabytes.
	if least := snapshotsJSONAtLeast(s.Chain); least > f.cfg.MaxDocument {
		docs[kindChain] = doc{err: errcode.New(errcode.DocumentTooLarge, "the %s of '%s' would be more than %d bytes (its snapshots alone), more than the mount serves (%d)",
			fileName(kindChain), rel, least, f.cfg.MaxDocument)}
	} else {
		docs[kindChain] = doc{data: ctl.InfoJSON(ctl.Info(s.Chain, true), true)}
	}
	switch {
	case s.MapErr == nil:
		docs[kindMap] = doc{data: s.Map.JSON()}
		docs[kindMapSVG] = doc{data: s.Map.SVG()}
	default:
		docs[kindMap] = doc{err: s.MapErr}
		docs[kindMapSVG] = doc{err: s.MapErr}
	}
	if s.CheckErr == nil {
		docs[kindCheck] = doc{data: s.Check.JSON()}
	} else {
		docs[kindCheck] = doc{err: s.CheckErr}
	}
	for k, d := range docs {
		// The worker's errors are the image's own while its files do not
		// change: they are remembered like documents, so that reading the
		// other files does not redo the work that failed.
		e := f.remember(genSlot{k, slot.id}, key, rel, d.data, d.err)
		docs[k] = doc{e.data, e.err}
	}
	d := docs[kind]
	return d.data, true, d.err
}

// chainKey names the state of every file of c: a document made from c is
// valid while the key is the same.
func chainKey(c *chainmodel.Chain) string {
	var key strings.Builder
	for _, im := range c.Images {
		fmt.Fprintf(&key, "%s:%s/", chainmodel.StateOf(&im.Stat), im.Name)
	}
	return key.String()
}
