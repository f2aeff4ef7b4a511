package ctl

import (
	"strings"

	"instarfs/errcode"
)

// NameMax is the longest file name component Linux file systems accept
// (NAME_MAX).
const NameMax = 255

// CheckImageName refuses a name (flag's value) that can never open as an image
// file, before anything is opened or written: a trailing slash, an empty, "."
// or ".." last component (each names a directory), or a component longer than
// NameMax. The empty name is left to the caller (rebase -b "" detaches).
func CheckImageName(cmd, flag, name string) error {
	if name == "" {
		return nil
	}
	for _, c := range strings.Split(name, "/") {
		if len(c) > NameMax {
			return errcode.New(errcode.NameTooLong, "%s: %s: the name component %.32s… is %d bytes long, more than the file system allows (%d)", cmd, flag, c, len(c), NameMax)
		}
	}
	last := name[strings.LastIndexByte(name, '/')+1:]
	switch {
	case last == "":
		return badArgs("%s: %s %s ends in a slash, which names a directory, never an image file; drop the trailing slash", cmd, flag, QuoteWord(name))
	case last == "." || last == "..":
		return badArgs("%s: %s %s names a directory, never an image file", cmd, flag, QuoteWord(name))
	}
	return nil
}
