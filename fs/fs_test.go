package fs

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"instarfs/chainmodel"
	"instarfs/ctl"
	"instarfs/errcode"
	"instarfs/proto"
)

func TestInodeNumber(t *testing.T) {
	seen := map[uint64]bool{}
	for kind := kindDir; kind <= kindRepair; kind++ {
		for ino := uint64(1); ino < 100; ino++ {
			n := inodeNumber(kind, 2049, ino)
			if n <= 1 || n == ^uint64(0) || seen[n] {
				t.Fatalf("inodeNumber(%d, 2049, %d) = %d: reserved or repeated", kind, ino, n)
			}
			if n != inodeNumber(kind, 2049, ino) {
				t.Fatal("not stable")
			}
			seen[n] = true
		}
	}
}

func TestWithin(t *testing.T) {
	tests := []struct {
		path, dir string
		want      bool
	}{
		{"/a/b", "/a", true},
		{"/a", "/a", true},
		{"/ab", "/a", false},
		{"/a", "/a/b", false},
		{"/x/../a/b", "/a", true},
	}
	for _, tt := range tests {
		if got := within(tt.path, tt.dir); got != tt.want {
			t.Errorf("within(%q, %q) = %v", tt.path, tt.dir, got)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/plain`:          "/mnt/plain",
		`/mnt/with\040space`:  "/mnt/with space",
		`/mnt/tab\011and\134`: "/mnt/tab\tand\\",
		`/mnt/odd\04`:         `/mnt/odd\04`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestSnapshotsJSONAtLeast checks that the bound used to refuse info.json and
// chain.json before rendering them is below what the snapshots really take,
// for the smallest snapshots there are (zero values, empty or short names).
func TestSnapshotsJSONAtLeast(t *testing.T) {
	chain := func(snaps []proto.Snapshot, depth int) *chainmodel.Chain {
		c := &chainmodel.Chain{}
		for i := range depth {
			c.Images = append(c.Images, &chainmodel.Image{Name: fmt.Sprintf("i%d.qcow2", i),
				Info: proto.Info{Format: "qcow2", VirtualSize: 1 << 20, ClusterSize: 65536, Snapshots: snaps}})
		}
		return c
	}
	for _, names := range [][2]string{{"", ""}, {"1", "a"}, {"65536", "a snapshot"}, {"\x01", "\"\\"}} {
		snaps := make([]proto.Snapshot, 100)
		for i := range snaps {
			snaps[i].ID, snaps[i].Name = names[0], names[1]
		}
		for _, depth := range []int{1, 3} {
			for _, backingChain := range []bool{false, true} {
				with := ctl.InfoJSON(ctl.Info(chain(snaps, depth), backingChain), backingChain)
				without := ctl.InfoJSON(ctl.Info(chain(nil, depth), backingChain), backingChain)
				images := 1
				if backingChain {
					images = depth
				}
				bound := snapshotsJSONAtLeast(chain(snaps, images))
				if real := int64(len(with) - len(without)); bound > real {
					t.Errorf("names %q, %d images, chain %v: bound %d bytes for snapshots that take %d", names, images, backingChain, bound, real)
				}
			}
		}
	}
}

func TestTerminatingPending(t *testing.T) {
	status := func(thread, group, blocked uint64) string {
		return fmt.Sprintf("Name:\tbash\nShdPnd:\t%016x\nSigPnd:\t%016x\nSigBlk:\t%016x\nSigIgn:\t0000000000000004\nSigCgt:\t000000004b813efb\n", group, thread, blocked)
	}
	tests := []struct {
		name                   string
		thread, group, blocked uint64
		want                   bool
	}{
		{"SIGCHLD", 0, sigMask(unix.SIGCHLD), 0, false},
		{"harmless", sigMask(unix.SIGURG), sigMask(unix.SIGWINCH, unix.SIGALRM, unix.SIGUSR1), 0, false},
		{"SIGINT to the group", 0, sigMask(unix.SIGINT), 0, true},
		{"SIGINT blocked", 0, sigMask(unix.SIGINT), sigMask(unix.SIGINT), false},
		{"fatal, as SIGKILL", sigMask(unix.SIGKILL), 0, sigMask(unix.SIGKILL), true},
		{"SIGPIPE to the thread", sigMask(unix.SIGPIPE), sigMask(unix.SIGCHLD), 0, true},
		{"SIGHUP", 0, sigMask(unix.SIGHUP), 0, true},
		{"SIGQUIT", 0, sigMask(unix.SIGQUIT), 0, true},
		{"SIGTERM", sigMask(unix.SIGTERM), 0, 0, true},
	}
	for _, tt := range tests {
		if got := terminatingPending([]byte(status(tt.thread, tt.group, tt.blocked))); got != tt.want {
			t.Errorf("%s: cancel %v, want %v", tt.name, got, tt.want)
		}
	}
	if terminatingPending([]byte("garbage")) {
		t.Errorf("unreadable status cancels")
	}
	if terminating(uint32(unix.Gettid())) {
		t.Errorf("this test has a terminating signal pending")
	}
}

// TestNewDirectory checks that New takes the image directory from the path
// policy, never from the working directory: the policy must take relative
// names against the image directory, which must be one of its roots.
func TestNewDirectory(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	policy, err := chainmodel.NewPolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer policy.Close()
	tests := []struct {
		imageDir, policyDir string
		ok                  bool
	}{
		{dir, dir, true},
		{dir + "/", dir, true},
		{dir, "", false},    // relative names would be taken against the working directory
		{dir, other, false}, // against another directory
		{other, other, false},
		{"images", "images", false},
	}
	for _, tt := range tests {
		p := policy
		p.Dir = tt.policyDir
		f, err := New(Config{ImageDir: tt.imageDir, Opener: &ctl.Opener{Policy: p}})
		if (err == nil) != tt.ok || err != nil && errcode.Of(err) != errcode.BadArguments {
			t.Errorf("image directory %q, policy's %q: %v", tt.imageDir, tt.policyDir, err)
		}
		if f != nil {
			f.Close()
		}
	}
}
