package worker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"instarfs/errcode"
	"instarfs/proto"
)

// TestOutputResultBounded checks that a result whose JSON the host would not
// read whole is answered with IMAGE_TOO_LARGE instead, and that one just
// within the bound is sent as it is.
func TestOutputResultBounded(t *testing.T) {
	// A string of control characters: each encodes to six bytes (\u0001).
	fits := strings.Repeat("\x01", (maxResultJSON-2)/6)
	for _, tc := range []struct {
		name     string
		v        any
		wantCode errcode.Code
	}{
		{"within the bound", fits, ""},
		{"one character more", fits + "\x01", errcode.ImageTooLarge},
		{"a 12 MiB snapshot name of control characters", []proto.Snapshot{{Name: strings.Repeat("\x01", 12<<20)}}, errcode.ImageTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			o := &output{w: bufio.NewWriter(&buf)}
			o.result(tc.v)
			o.flush()
			if buf.Len() > proto.MaxResultBytes {
				t.Errorf("wrote %d bytes, more than the host reads (%d)", buf.Len(), proto.MaxResultBytes)
			}
			if tc.wantCode == "" {
				if !bytes.HasPrefix(buf.Bytes(), []byte(`{"result":"\u0001`)) {
					t.Errorf("no result: %.200s", buf.Bytes())
				}
				return
			}
			var m proto.Message
			if err := json.Unmarshal(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), &m); err != nil {
				t.Fatalf("not one message: %v", err)
			}
			if m.Error == nil || m.Error.Code != tc.wantCode {
				t.Errorf("error %+v, want %s", m.Error, tc.wantCode)
			}
		})
	}
}

// TestOutputResultLine checks that a result line is the line encoding/json
// makes of proto.Message{Result: ...}, which the worker writes by hand.
func TestOutputResultLine(t *testing.T) {
	at := func(v int64) *int64 { return &v }
	for name, v := range map[string]any{
		"info":       proto.Info{Format: "qcow2", VirtualSize: 1 << 30, BackingFilename: "<b&c>.qcow2\u2028"},
		"map rows":   proto.MapRows{{Length: 65536, Present: true, Data: true, Offset: at(327680)}, {Start: 65536, Length: 1 << 20, Zero: true}},
		"no rows":    proto.MapRows{},
		"empty list": []proto.Snapshot{},
		"string":     "\x01\"\\</script>",
	} {
		var buf bytes.Buffer
		o := &output{w: bufio.NewWriter(&buf)}
		o.result(v)
		o.flush()
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(proto.Message{Result: b})
		if err != nil {
			t.Fatal(err)
		}
		if got := buf.String(); got != string(want)+"\n" {
			t.Errorf("%s: line\n %q\nwant\n %q", name, got, want)
		}
	}
}

// TestOutputProgress: progress lines go out at most once per percent, and
// only when the host shows them.
func TestOutputProgress(t *testing.T) {
	fractions := []float64{0.001, 0.005, 0.015, 0.019, 0.5, 0.5, 0.994, 1, 1.5}
	for _, tc := range []struct {
		want bool
		sent []float64
	}{
		{false, nil},
		{true, []float64{0.015, 0.5, 0.994, 1}},
	} {
		var buf bytes.Buffer
		o := &output{w: bufio.NewWriter(&buf), wantProgress: tc.want}
		for _, f := range fractions {
			o.progress(f)
		}
		o.flush()
		var sent []float64
		for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
			if line == "" {
				continue
			}
			var m proto.Message
			if err := json.Unmarshal([]byte(line), &m); err != nil || m.Progress == nil {
				t.Fatalf("wanted %v: line %q is not a progress line (%v)", tc.want, line, err)
			}
			sent = append(sent, *m.Progress)
		}
		if fmt.Sprint(sent) != fmt.Sprint(tc.sent) {
			t.Errorf("wanted %v: sent %v, want %v", tc.want, sent, tc.sent)
		}
	}
}
