package proto

import (
	"slices"
	"testing"
)

func TestFormatValid(t *testing.T) {
	for _, tc := range []struct {
		f    Format
		want bool
	}{
		{"qcow2", true}, {"vmdk", true}, {"raw", true},
		{"", false}, {"QCOW2", false}, {"qcow", false}, {"vpc", false}, {"raw ", false},
	} {
		if got := tc.f.Valid(); got != tc.want {
			t.Errorf("Format(%q).Valid() = %v, want %v", tc.f, got, tc.want)
		}
	}
	if got := FormatNames(); !slices.Equal(got, []string{"qcow2", "vmdk", "raw"}) {
		t.Errorf("FormatNames() = %q", got)
	}
}
