// Package chainmodel is the host's view of disk images and their backing chains:
// which files make up a chain, how each backing reference is checked and opened
// under the path policy, and what the worker said about each image.
//
// The host never parses image bytes: every fact about an image's contents comes
// from a worker (ctl.Opener asks one), and chainmodel imports nothing that runs
// workers.
package chainmodel

import (
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"instarfs/proto"
)

// MaxDepth is the number of backing files a chain may have below its top.
const MaxDepth = 16

// Image is one open image of a chain.
type Image struct {
	// Name is the image's name as qemu-img prints it: the path the user gave for
	// the top, and for a backing image its full backing file name.
	Name string
	// Loc is where the image was opened, beneath an allowed root.
	Loc  Loc
	File *os.File
	Info proto.Info
	Stat unix.Stat_t
}

// Dir is the directory backing references of this image are resolved against:
// a host path, taken lexically (Policy.Locate), then opened beneath a root.
func (im *Image) Dir() string { return filepath.Dir(im.Loc.Path()) }

// ID is the image file's identity.
func (im *Image) ID() FileID { return IDOf(&im.Stat) }

// ActualSize is the space the image file takes on disk.
func (im *Image) ActualSize() int64 { return im.Stat.Blocks * 512 }

// Chain is an image and its backing images, top first.
type Chain struct {
	Images []*Image
}

// Top is the image the chain was opened for.
func (c *Chain) Top() *Image { return c.Images[0] }

// Files returns the open files of the chain, top first.
func (c *Chain) Files() []*os.File {
	fs := make([]*os.File, len(c.Images))
	for i, im := range c.Images {
		fs[i] = im.File
	}
	return fs
}

// Refs returns the worker's descriptions of the chain's images, top first, all
// read-only.
func (c *Chain) Refs() []proto.ImageRef {
	refs := make([]proto.ImageRef, len(c.Images))
	for i, im := range c.Images {
		refs[i] = proto.ImageRef{Name: filepath.Base(im.Name), Format: im.Info.Format}
	}
	return refs
}

// Close drops the chain's image locks and closes every file of the chain.
func (c *Chain) Close() error {
	for _, im := range c.Images {
		UnlockImage(im.File)
		im.File.Close()
	}
	return nil
}

// FullBackingName is the name qemu-img gives a backing file: the backing name
// joined to the directory part of the name of the image that refers to it.
func FullBackingName(referrer, backing string) string {
	if filepath.IsAbs(backing) {
		return backing
	}
	if i := strings.LastIndexByte(referrer, '/'); i >= 0 {
		return referrer[:i+1] + backing
	}
	return backing
}
