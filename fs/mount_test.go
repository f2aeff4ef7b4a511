package fs

import (
	"errors"
	"strings"
	"testing"
)

// TestMountError: a failed mount names what fusermount3 said and the fix.
func TestMountError(t *testing.T) {
	tests := []struct {
		said, err string
		want      []string
	}{
		{"/usr/bin/fusermount3: failed to open /dev/fuse: Permission denied", "fusermount exited with code 256", []string{"failed to open /dev/fuse", "give it read and write access"}},
		{"fusermount3: option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf", "fusermount exited with code 256", []string{"user_allow_other in /etc/fuse.conf"}},
		{"fusermount3: mount failed: Operation not permitted", "fusermount exited with code 256", []string{"mount failed: Operation not permitted", "setuid root"}},
		{"", `exec: "/bin/fusermount": stat /bin/fusermount: no such file or directory`, []string{"install it (Debian package fuse3)"}},
	}
	for _, tt := range tests {
		got := mountError("/mnt", errors.New(tt.err), tt.said).Error()
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("%q: %q does not say %q", tt.said, got, w)
			}
		}
		if tt.said != "" && strings.Contains(got, "exited with code") {
			t.Errorf("%q: %q shows the wait status", tt.said, got)
		}
	}
}
