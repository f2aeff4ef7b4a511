package ctl

import (
	"strings"
	"testing"

	"instarfs/errcode"
)

// TestValidate: what no rebase or commit can do is refused with its code
// before any file is opened, whichever front end asked.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want errcode.Code
	}{
		{"rebase", RebaseRequest{Backing: "new.qcow2", BackingFormat: "qcow2", Format: "vmdk"}.Validate(), ""},
		{"rebase detach", RebaseRequest{}.Validate(), ""},
		{"rebase -f unknown", RebaseRequest{Backing: "b", Format: "vpc"}.Validate(), errcode.UnknownFormat},
		{"rebase -F unknown", RebaseRequest{Backing: "b", BackingFormat: "QCOW2"}.Validate(), errcode.UnknownFormat},
		{"rebase name too long", RebaseRequest{Backing: strings.Repeat("a/", 600)}.Validate(), errcode.BackingNameTooLong},
		{"rebase component too long", RebaseRequest{Backing: strings.Repeat("a", NameMax+1)}.Validate(), errcode.NameTooLong},
		{"rebase onto a directory", RebaseRequest{Backing: "dir/"}.Validate(), errcode.BadArguments},
		{"commit", CommitRequest{Base: "base.qcow2", Cache: "unsafe", Rate: 1}.Validate(), ""},
		{"commit defaults", CommitRequest{}.Validate(), ""},
		{"commit cache unknown", CommitRequest{Cache: "direct"}.Validate(), errcode.BadArguments},
		{"commit negative rate", CommitRequest{Rate: -1}.Validate(), errcode.BadArguments},
	} {
		switch {
		case tc.want == "" && tc.err != nil:
			t.Errorf("%s: %v, want no error", tc.name, tc.err)
		case tc.want != "" && errcode.Of(tc.err) != tc.want:
			t.Errorf("%s: %v, want code %s", tc.name, tc.err, tc.want)
		}
	}
}
