package jail

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSubordinateRanges(t *testing.T) {
	p := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(p, []byte("alice:100000:65536\nbad line\nbob:1879048192:10\n#x:1:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := subordinateRanges(p)
	want := [][2]int{{100000, 65536}, {1879048192, 10}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ranges %v, want %v", got, want)
	}
	for _, tt := range []struct {
		id int
		in bool
	}{{99999, false}, {100000, true}, {165535, true}, {165536, false}, {1879048201, true}, {1879048202, false}} {
		if inRanges(tt.id, got) != tt.in {
			t.Errorf("inRanges(%d) = %t, want %t", tt.id, !tt.in, tt.in)
		}
	}
}

// TestProtectedHardlinks: sandbox-check reports fs.protected_hardlinks and
// warns exactly when it is off, since instarfs follows hard links.
func TestProtectedHardlinks(t *testing.T) {
	h := HostReport()
	if v, err := readInt("/proc/sys/fs/protected_hardlinks"); err == nil && int(v) != h.ProtectedHardlinks {
		t.Errorf("report says %d, the kernel %d", h.ProtectedHardlinks, v)
	}
	for _, tt := range []struct {
		v    int
		warn bool
	}{{-1, false}, {0, true}, {1, false}} {
		r := &Report{Host: Host{ProtectedHardlinks: tt.v}}
		r.finish(&Plain{})
		warned := strings.Contains(strings.Join(r.Warnings, "\n"), "fs.protected_hardlinks is 0")
		if warned != tt.warn {
			t.Errorf("protected_hardlinks=%d: warnings %q", tt.v, r.Warnings)
		}
		if !strings.Contains(r.String(), "protected hardlinks") {
			t.Errorf("the report does not show protected hardlinks:\n%s", r)
		}
	}
}

func TestReportJSON(t *testing.T) {
	r := &Report{Backend: "jail", Worker: &ProbeReport{Probes: []ProbeResult{{Name: "x", Expect: ExpectRefused}}}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}
