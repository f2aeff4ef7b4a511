package ctl

import (
	"reflect"
	"strings"
	"testing"

	"instarfs/errcode"
)

func TestSplitWords(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "", want: nil},
		{in: "\n", want: nil},
		{in: "new.qcow2\n", want: []string{"new.qcow2"}},
		{in: "  -u\t-F qcow2  new.qcow2 ", want: []string{"-u", "-F", "qcow2", "new.qcow2"}},
		{in: `-b ""`, want: []string{"-b", ""}},
		{in: `-b ''`, want: []string{"-b", ""}},
		{in: `'a b'c"d e"`, want: []string{"a bcd e"}},
		{in: `"a\"b\\c\d"`, want: []string{`a"b\c\d`}},
		{in: `a\ b`, want: []string{"a b"}},
		{in: "a\\\nb", want: []string{"ab"}},
		{in: "a \\\n b", want: []string{"a", "b"}},
		{in: `'it'\''s'`, want: []string{"it's"}},
		{in: `'open`, bad: true},
		{in: `"open`, bad: true},
		{in: `end\`, bad: true},
		{in: "a\x00b", bad: true},
	}
	for _, tt := range tests {
		ws, err := splitWords(tt.in)
		var got []string
		for _, w := range ws {
			got = append(got, w.s)
		}
		if tt.bad {
			if errcode.Of(err) != errcode.BadArguments {
				t.Errorf("splitWords(%q) = %q, %v; want BAD_ARGUMENTS", tt.in, got, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitWords(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseRebase(t *testing.T) {
	tests := []struct {
		in   string
		want RebaseRequest
		bad  bool
	}{
		{in: "new.qcow2\n", want: RebaseRequest{Backing: "new.qcow2"}},
		{in: "-u -F qcow2 new.qcow2", want: RebaseRequest{Backing: "new.qcow2", BackingFormat: "qcow2", Unsafe: true}},
		{in: "-b new.qcow2 -F raw -f qcow2", want: RebaseRequest{Backing: "new.qcow2", BackingFormat: "raw", Format: "qcow2"}},
		{in: "-uFvmdk -bsub/b.vmdk", want: RebaseRequest{Backing: "sub/b.vmdk", BackingFormat: "vmdk", Unsafe: true}},
		{in: "-p -q new.qcow2", want: RebaseRequest{Backing: "new.qcow2"}},
		{in: "-- -odd-name", want: RebaseRequest{Backing: "-odd-name"}},
		{in: `"my image.qcow2"`, want: RebaseRequest{Backing: "my image.qcow2"}},
		{in: "--output=json new.qcow2", want: RebaseRequest{Backing: "new.qcow2"}},
		{in: "--unsafe --backing-format=qcow2 --backing new.qcow2", want: RebaseRequest{Backing: "new.qcow2", BackingFormat: "qcow2", Unsafe: true}},
		// Detaching is spelled out, with quotes.
		{in: `-b ""`, want: RebaseRequest{}},
		{in: `-b ''` + "\n", want: RebaseRequest{}},
		{in: `-u -b ""`, want: RebaseRequest{Unsafe: true}},
		{in: `-b""`, want: RebaseRequest{}},
		{in: `-u -b''`, want: RebaseRequest{Unsafe: true}},
		{in: `--backing=""`, want: RebaseRequest{}},
		{in: `--backing ''`, want: RebaseRequest{}},
		// Lines without a target, as the first write of a split command
		// sends them, never detach.
		{in: "", bad: true},
		{in: "\n", bad: true},
		{in: " \t\n", bad: true},
		{in: "-u", bad: true},
		{in: "-u\n", bad: true},
		{in: "-F qcow2", bad: true},
		{in: "-u -F qcow2\n", bad: true},
		{in: "-p", bad: true},
		{in: "-q -p\n", bad: true},
		{in: "-u -b ", bad: true},
		{in: "-u -b\n", bad: true},
		{in: "-b", bad: true},
		{in: "--backing=", bad: true},
		{in: "--backing=\n", bad: true},
		{in: "--backing", bad: true},
		{in: "-u --backing=", bad: true},
		{in: `""`, bad: true},
		{in: `-u ''`, bad: true},
		{in: `-F qcow2 -b ""`, bad: true},
		// Other refusals.
		{in: "-x new.qcow2", bad: true},
		{in: "--output=xml new.qcow2", bad: true},
		{in: "-o json new.qcow2", bad: true},
		{in: "--unsafe=yes", bad: true},
		{in: "--bogus", bad: true},
		{in: "a.qcow2 b.qcow2", bad: true},
		{in: "-b a.qcow2 b.qcow2", bad: true},
		{in: "-b a.qcow2 -b b.qcow2", bad: true},
		{in: "-F qed new.qcow2", bad: true},
		{in: "-f", bad: true},
		{in: "-f new.qcow2", bad: true},
		{in: "--format= new.qcow2", bad: true},
		{in: "'new.qcow2", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseRebase(tt.in)
		if tt.bad {
			if errcode.Of(err) != errcode.BadArguments {
				t.Errorf("ParseRebase(%q) = %+v, %v; want BAD_ARGUMENTS", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseRebase(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseCommit(t *testing.T) {
	tests := []struct {
		in   string
		want CommitRequest
		bad  bool
	}{
		{in: "", want: CommitRequest{}},
		{in: "\n", want: CommitRequest{}},
		{in: "-b base.qcow2 -d", want: CommitRequest{Base: "base.qcow2", Drop: true}},
		{in: "-d -f qcow2 -t none -r 10M", want: CommitRequest{Drop: true, Format: "qcow2", Cache: "none", Rate: 10 << 20}},
		{in: "-r 1.5k", want: CommitRequest{Rate: 1536}},
		{in: "-r 4096", want: CommitRequest{Rate: 4096}},
		{in: "-pq", want: CommitRequest{}},
		{in: "base.qcow2", bad: true},
		{in: "-r fast", bad: true},
		{in: "-r -1", bad: true},
		{in: "-r 1.5", bad: true},
		{in: "-r 1e9", bad: true},
		{in: "-t sometimes", bad: true},
		{in: "-u", bad: true},
		{in: "-f qed", bad: true},
		{in: "--drop --base=base.qcow2 --rate 1M --cache unsafe -q", want: CommitRequest{Drop: true, Base: "base.qcow2", Rate: 1 << 20, Cache: "unsafe"}},
		{in: "--dropp", bad: true},
		{in: "-b", bad: true},
		{in: "-d -b\n", bad: true},
		{in: "--base=", bad: true},
		{in: `-b ""`, bad: true},
		{in: "-r", bad: true},
		{in: "--rate=", bad: true},
		{in: "-t ''", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseCommit(tt.in)
		if tt.bad {
			if errcode.Of(err) != errcode.BadArguments {
				t.Errorf("ParseCommit(%q) = %+v, %v; want BAD_ARGUMENTS", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseCommit(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// FuzzControlGrammar checks that the grammar never panics and that whatever it
// accepts, rendered back with Args, parses to the same request. Args quotes
// every word, so a line near MaxControlLine may render longer than a control
// file takes; such a rendering is not read back.
func FuzzControlGrammar(f *testing.F) {
	for _, s := range []string{
		"", "\n", "new.qcow2\n", "-u -F qcow2 new.qcow2", `-b ""`, "-b base.qcow2 -d",
		"-d -f qcow2 -t none -r 10M", `'a b'c"d\" e"`, "-uFvmdk -bsub/b.vmdk", "-- -x", "a\\\nb",
		"-r 1.5k", "'it'\\''s'", "-b", "-u -b base.qcow2", `-u -b ""`, "--backing= x", "-b'' -u",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		if r, err := ParseRebase(line); err == nil {
			if r.Backing == "" && (r.BackingFormat != "" || !strings.Contains(line, `""`) && !strings.Contains(line, "''")) {
				t.Fatalf("rebase %q: detaches (%+v) without an explicit -b \"\"", line, r)
			}
			if s := r.Args(); len(s) <= MaxControlLine {
				back, err := ParseRebase(s)
				if err != nil || back != r {
					t.Fatalf("rebase %q: parsed %+v, rendered %q, reparsed %+v, %v", line, r, s, back, err)
				}
			}
			// No prefix of an accepted line that ends between words may
			// detach: a split write must never run half a command as a
			// detach.
			for i := 0; i < len(line); i++ {
				if line[i] != ' ' && line[i] != '\n' {
					continue
				}
				if p, err := ParseRebase(line[:i]); err == nil && p.Backing == "" && r.Backing != "" {
					t.Fatalf("rebase %q: the prefix %q detaches", line, line[:i])
				}
			}
		} else if errcode.Of(err) != errcode.BadArguments {
			t.Fatalf("rebase %q: error without BAD_ARGUMENTS: %v", line, err)
		}
		if c, err := ParseCommit(line); err == nil {
			if s := c.Args(); len(s) <= MaxControlLine {
				back, err := ParseCommit(s)
				if err != nil || back != c {
					t.Fatalf("commit %q: parsed %+v, rendered %q, reparsed %+v, %v", line, c, s, back, err)
				}
			}
		} else if errcode.Of(err) != errcode.BadArguments {
			t.Fatalf("commit %q: error without BAD_ARGUMENTS: %v", line, err)
		}
	})
}
