package ctl

import (
	"math"
	"slices"
	"strconv"
	"strings"

	"instarfs/errcode"
	"instarfs/proto"
)

// The control-file grammar.
//
// A write to a mounted image's rebase or commit file carries the arguments of
// the subcommand without FILE, as one line. The line is split into words as a
// POSIX shell would split it, without expansions: blanks separate words,
// 'single quotes' keep everything literally, "double quotes" keep everything
// but a backslash before ", \, $ or `, and a backslash outside quotes keeps
// the next character. The flags are the command line's: short ones, whose value
// may be attached (-Fqcow2) or the next word (-F qcow2) and which may be
// grouped when they take none (-up), and long ones (--backing-format qcow2,
// --backing-format=qcow2). --output is accepted and ignored (the result is in
// result.json). "--" ends the flags. Anything else is refused with
// BAD_ARGUMENTS, which a control file reports as EINVAL.
//
// A line is a whole command, but a writer may split one command into several
// writes (bash's printf '%s\n' a b writes once per argument), and only the
// first write of an open file runs. So no prefix of a command may mean more
// than the command: a flag's value is never empty unless quotes spell it out
// (-b "" detaches; -b at the end of a line, or --backing=, is a missing
// value), and rebase always names its target (an empty line, -u alone or
// -F FMT alone is refused rather than read as a detach).

// MaxControlLine is the longest control-file write accepted.
const MaxControlLine = 4096

// usage lists, per control file, the forms its parser accepts: one line per
// form, each a line that may be written to the file, with a shell comment.
// Keep it next to the parsers' changes.
var usage = map[string][]string{
	"rebase": {
		`-b BACKING [-F FMT] [-f FMT]      # safe rebase onto BACKING (relative to the image file's directory)`,
		`BACKING [-F FMT] [-f FMT]         # the same`,
		`-u -b BACKING [-F FMT] [-f FMT]   # unsafe: rewrite the header only`,
		`-b ""                             # detach, copying the backing data in`,
		`-u -b ""                          # unsafe detach: remove the name only`,
	},
	"commit": {
		`[-r RATE] [-t CACHE] [-f FMT]         # commit into the backing file, then empty the image`,
		`-d [-r RATE] [-t CACHE] [-f FMT]      # commit into the backing file, keep the image`,
		`-b BASE [-r RATE] [-t CACHE] [-f FMT] # commit into BASE further down the chain (implies -d)`,
	},
	"repair": {
		`leaks                                 # check -r leaks: free leaked clusters`,
		`all                                   # check -r all: also fix refcount errors and what qemu-img repairs`,
	},
}

// Usage is what reading the control file op gives: the forms it accepts, one
// per line.
func Usage(op string) string {
	if len(usage[op]) == 0 {
		return ""
	}
	return strings.Join(usage[op], "\n") + "\n"
}

// word is one word of a control-file line. quoteAt is the length the word
// had when its last quote opened, -1 when it has none: a value that starts at
// k and is empty was given explicitly (-b "", or two single quotes) only when quoteAt
// >= k. An empty rest without quotes (-b at the end, --backing=) is a line cut
// short, as a split write would send it, never an empty value.
type word struct {
	s       string
	quoteAt int
}

// explicitEmpty reports whether the part of w from byte k on is an empty
// value that quotes spelled out.
func (w word) explicitEmpty(k int) bool {
	return len(w.s) == k && w.quoteAt >= k
}

// splitWords splits a control-file line into words.
func splitWords(line string) ([]word, error) {
	if len(line) > MaxControlLine {
		return nil, badArgs("the arguments are %d bytes long (at most %d)", len(line), MaxControlLine)
	}
	var (
		words   []word
		cur     strings.Builder
		in      bool // inside a word
		quoteAt = -1
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == 0:
			return nil, badArgs("the arguments contain a NUL byte")
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if in {
				words = append(words, word{cur.String(), quoteAt})
				cur.Reset()
				in, quoteAt = false, -1
			}
		case c == '\'':
			in, quoteAt = true, cur.Len()
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, badArgs("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			in, quoteAt = true, cur.Len()
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == 0 {
					return nil, badArgs("the arguments contain a NUL byte")
				}
				if line[i] == '\\' && i+1 < len(line) && strings.IndexByte("\"\\$`", line[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(line[i])
			}
			if i >= len(line) {
				return nil, badArgs("unterminated double quote")
			}
		case c == '\\':
			if i+1 >= len(line) {
				return nil, badArgs("a backslash ends the arguments")
			}
			i++
			if line[i] == '\n' {
				continue // line continuation: no character, no word
			}
			in = true
			if line[i] == 0 {
				return nil, badArgs("the arguments contain a NUL byte")
			}
			cur.WriteByte(line[i])
		default:
			in = true
			cur.WriteByte(c)
		}
	}
	if in {
		words = append(words, word{cur.String(), quoteAt})
	}
	return words, nil
}

// QuoteWord quotes w so that the grammar reads it back as one word.
func QuoteWord(w string) string {
	if w != "" && strings.IndexFunc(w, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:+,=@%", r))
	}) < 0 {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

// flagSpec describes one flag: whether it takes a value, and its long name.
type flagSpec struct {
	value bool
	long  string
}

// outputFlag is --output, accepted for parity with the command line and
// ignored: a control file's result is in result.json.
const outputFlag = 'o'

// parsed is the outcome of parseFlags: flag values by letter (the last one
// wins for booleans; a repeated valued flag is an error) and the positional
// words. A flag's value is never empty unless quotes spelled it out
// (-b ""); args keeps the positional words with their quoting.
type parsed struct {
	values map[byte]string
	set    map[byte]bool
	args   []word
}

func parseFlags(cmd string, words []word, specs map[byte]flagSpec) (*parsed, error) {
	p := &parsed{values: map[byte]string{}, set: map[byte]bool{}}
	// value takes a flag's value from w starting at byte k; the flag is named
	// name in messages.
	value := func(name string, c byte, w word, k int) error {
		if w.s[k:] == "" && !w.explicitEmpty(k) {
			return badArgs("%s: flag %s needs a value", cmd, name)
		}
		if p.set[c] {
			return badArgs("%s: flag %s given twice", cmd, name)
		}
		p.set[c], p.values[c] = true, w.s[k:]
		return nil
	}
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w.s == "--" {
			p.args = append(p.args, words[i+1:]...)
			break
		}
		if len(w.s) < 2 || w.s[0] != '-' {
			p.args = append(p.args, w)
			continue
		}
		if w.s[1] == '-' {
			name, _, hasValue := strings.Cut(w.s[2:], "=")
			c, spec, ok := byte(0), flagSpec{}, false
			for k, s := range specs {
				if s.long == name {
					c, spec, ok = k, s, true
				}
			}
			switch {
			case !ok:
				return nil, badArgs("%s: unknown flag --%s", cmd, QuoteWord(name))
			case !spec.value && hasValue:
				return nil, badArgs("%s: flag --%s takes no value", cmd, name)
			case !spec.value:
				p.set[c] = true
				continue
			case hasValue:
				if err := value("--"+name, c, w, 3+len(name)); err != nil {
					return nil, err
				}
				continue
			case i+1 >= len(words):
				return nil, badArgs("%s: flag --%s needs a value", cmd, name)
			}
			i++
			if err := value("--"+name, c, words[i], 0); err != nil {
				return nil, err
			}
			continue
		}
		for j := 1; j < len(w.s); j++ {
			c := w.s[j]
			spec, ok := specs[c]
			if !ok || c == outputFlag {
				return nil, badArgs("%s: unknown flag -%c", cmd, c)
			}
			if !spec.value {
				p.set[c] = true
				continue
			}
			name := "-" + string(c)
			var err error
			switch {
			case j+1 < len(w.s) || w.explicitEmpty(j+1):
				err = value(name, c, w, j+1)
			case i+1 < len(words):
				i++
				err = value(name, c, words[i], 0)
			default:
				err = badArgs("%s: flag %s needs a value", cmd, name)
			}
			if err != nil {
				return nil, err
			}
			break
		}
	}
	return p, nil
}

func checkFormat(cmd string, flag byte, v string) error {
	if proto.Format(v).Valid() {
		return nil
	}
	return badArgs("%s: -%c: unknown format %s (qcow2, vmdk or raw)", cmd, flag, QuoteWord(v))
}

var rebaseFlags = map[byte]flagSpec{
	'b': {true, "backing"}, 'F': {true, "backing-format"}, 'f': {true, "format"},
	'u': {false, "unsafe"}, 'p': {false, "progress"}, 'q': {false, "quiet"},
	outputFlag: {true, "output"},
}

// rebaseForms is the grammar of a rebase control file, for messages.
const rebaseForms = `[-u] [-F FMT] -b NEW_BACKING, or [-u] -b "" to detach`

// ParseRebase parses what was written to a rebase control file. The new
// backing file is -b's value or the one positional word. The target is never
// implied: detaching takes -b "" (or two single quotes), and a line without a target
// (empty, -u alone, -F FMT alone) is refused, because it may be the first
// part of a command that a writer split into several writes.
func ParseRebase(line string) (RebaseRequest, error) {
	var r RebaseRequest
	words, err := splitWords(line)
	if err != nil {
		return r, err
	}
	p, err := parseFlags("rebase", words, rebaseFlags)
	if err == nil {
		err = checkOutput("rebase", p)
	}
	if err != nil {
		return r, err
	}
	switch {
	case len(p.args) > 1:
		return r, badArgs("rebase: too many arguments: %s (give the new backing file once)", joinQuoted(p.args))
	case len(p.args) == 1 && p.set['b']:
		return r, badArgs("rebase: the new backing file is given both by -b and as %s", QuoteWord(p.args[0].s))
	case len(p.args) == 1 && p.args[0].s == "":
		return r, badArgs(`rebase: the new backing file is empty; to detach the image write -b "" (%s)`, rebaseForms)
	case len(p.args) == 1:
		r.Backing = p.args[0].s
	case p.set['b']:
		r.Backing = p.values['b']
	case len(words) == 0:
		return r, badArgs("rebase: the line is empty; name the new backing file: %s", rebaseForms)
	case p.set['u']:
		return r, badArgs("rebase: -u needs the new backing file: %s", rebaseForms)
	case p.set['F']:
		return r, badArgs("rebase: -F %s names the format of a new backing file, but none is given: %s", QuoteWord(p.values['F']), rebaseForms)
	default:
		return r, badArgs("rebase: no new backing file given: %s", rebaseForms)
	}
	r.BackingFormat, r.Format, r.Unsafe = p.values['F'], p.values['f'], p.set['u']
	if p.set['F'] {
		if err := checkFormat("rebase", 'F', r.BackingFormat); err != nil {
			return r, err
		}
		if r.Backing == "" {
			return r, badArgs("rebase: -F names the format of a backing file, but the image is being detached")
		}
	}
	if p.set['f'] {
		if err := checkFormat("rebase", 'f', r.Format); err != nil {
			return r, err
		}
	}
	return r, nil
}

var commitFlags = map[byte]flagSpec{
	'b': {true, "base"}, 'f': {true, "format"}, 'r': {true, "rate"}, 't': {true, "cache"},
	'd': {false, "drop"}, 'p': {false, "progress"}, 'q': {false, "quiet"},
	outputFlag: {true, "output"},
}

// checkOutput validates --output, which a control file ignores.
func checkOutput(cmd string, p *parsed) error {
	if v := p.values[outputFlag]; p.set[outputFlag] && v != "human" && v != "json" {
		return badArgs("%s: --output: unknown value %s (human or json)", cmd, QuoteWord(v))
	}
	return nil
}

// ParseCommit parses what was written to a commit control file: qemu-img
// commit's flags and no positional word.
func ParseCommit(line string) (CommitRequest, error) {
	var r CommitRequest
	words, err := splitWords(line)
	if err != nil {
		return r, err
	}
	p, err := parseFlags("commit", words, commitFlags)
	if err == nil {
		err = checkOutput("commit", p)
	}
	if err != nil {
		return r, err
	}
	if len(p.args) > 0 {
		return r, badArgs("commit: unexpected argument %s (the image is the directory written to; use -b for the base)", QuoteWord(p.args[0].s))
	}
	r.Base, r.Format, r.Drop = p.values['b'], p.values['f'], p.set['d']
	if p.set['b'] && r.Base == "" {
		return r, badArgs("commit: -b: the base image's name is empty (leave -b out to commit into the backing file)")
	}
	if p.set['f'] {
		if err := checkFormat("commit", 'f', r.Format); err != nil {
			return r, err
		}
	}
	if p.set['r'] {
		if r.Rate, err = ParseRate(p.values['r']); err != nil {
			return r, err
		}
	}
	if p.set['t'] {
		v := p.values['t']
		if !slices.Contains(proto.CacheModes, v) {
			return r, badArgs("commit: -t: unknown cache mode %s (none, writeback, writethrough, directsync or unsafe)", QuoteWord(v))
		}
		r.Cache = v
	}
	return r, nil
}

// ParseRate parses a rate limit in bytes per second as qemu-img does (see
// ParseSize).
func ParseRate(s string) (int64, error) {
	r, problem := ParseSize(s)
	if problem != "" {
		return 0, badArgs("commit: -r: %s %s (bytes per second, e.g. 10M)", problem, QuoteWord(s))
	}
	return r, nil
}

// ParseSize parses a byte count as qemu-img's cvtnum does: a number, possibly
// fractional, with an optional binary suffix B, K, M, G, T, P or E (upper or
// lower case). problem names what is wrong, or is empty.
func ParseSize(s string) (n int64, problem string) {
	num, mult := s, float64(1)
	if n := len(s); n > 0 {
		if i := strings.IndexByte("BKMGTPE", upper(s[n-1])); i >= 0 {
			num, mult = s[:n-1], math.Pow(1024, float64(i))
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	switch {
	case err != nil || num == "" || strings.ContainsAny(num, "eExXpPnNiI_+") || v < 0 || math.IsNaN(v):
		return 0, "invalid size"
	case mult == 1 && v != math.Trunc(v):
		return 0, "a fractional size needs a suffix:"
	case v*mult >= math.MaxInt64:
		return 0, "too large:"
	}
	return int64(v * mult), ""
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// Args renders r as a control-file line that ParseRebase reads back as r.
func (r RebaseRequest) Args() string {
	var w []string
	if r.Unsafe {
		w = append(w, "-u")
	}
	if r.Format != "" {
		w = append(w, "-f", QuoteWord(r.Format))
	}
	if r.BackingFormat != "" {
		w = append(w, "-F", QuoteWord(r.BackingFormat))
	}
	w = append(w, "-b", QuoteWord(r.Backing))
	return strings.Join(w, " ")
}

// Args renders r as a control-file line that ParseCommit reads back as r.
func (r CommitRequest) Args() string {
	var w []string
	if r.Drop {
		w = append(w, "-d")
	}
	if r.Format != "" {
		w = append(w, "-f", QuoteWord(r.Format))
	}
	if r.Base != "" {
		w = append(w, "-b", QuoteWord(r.Base))
	}
	if r.Rate != 0 {
		w = append(w, "-r", strconv.FormatInt(r.Rate, 10))
	}
	if r.Cache != "" {
		w = append(w, "-t", QuoteWord(r.Cache))
	}
	return strings.Join(w, " ")
}

func joinQuoted(ws []word) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = QuoteWord(w.s)
	}
	return strings.Join(q, " ")
}

func badArgs(format string, args ...any) error {
	return errcode.New(errcode.BadArguments, format, args...)
}
