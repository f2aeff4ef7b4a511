// Package docs_test checks the documentation against the code: every relative
// link and anchor resolves, every page is reachable from the index, every flag
// a subcommand's --help shows is in its guide and every flag a guide shows
// exists, and the runnable examples (```sh blocks under an "Examples"
// heading) print what they show when run against generated images.
package docs_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"instarfs/internal/qemutest"
	"instarfs/internal/testbin"
)

// binary is the instarfs binary the tests run, built by TestMain.
var binary string

func TestMain(m *testing.M) {
	bin, remove, err := testbin.Build("..")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	binary = bin
	code := m.Run()
	remove()
	os.Exit(code)
}

// pages are the Markdown files of the documentation set, relative to this
// directory.
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob("*.md")
	if err != nil || len(docs) == 0 {
		t.Fatalf("no pages in docs/: %v", err)
	}
	return append(docs, "../README.md", "../CHANGELOG.md", "../ARCHITECTURE.md")
}

// page is a Markdown file split into what the checks look at.
type page struct {
	path     string
	lines    []string
	code     []bool    // whether each line is inside a fenced code block
	headings []heading // in order
	anchors  map[string]bool
}

type heading struct {
	level int
	text  string
	line  int
}

var pageCache = map[string]*page{}

func load(t *testing.T, path string) *page {
	t.Helper()
	path = filepath.Clean(path)
	if p := pageCache[path]; p != nil {
		return p
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := &page{path: path, anchors: map[string]bool{}}
	seen := map[string]int{}
	fence := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " ")
		inCode := fence != ""
		switch {
		case fence != "" && strings.HasPrefix(trimmed, fence):
			fence = ""
		case fence == "" && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")):
			fence = trimmed[:3]
			inCode = true
		case fence == "" && strings.HasPrefix(line, "#"):
			level := len(line) - len(strings.TrimLeft(line, "#"))
			text := strings.TrimSpace(line[level:])
			p.headings = append(p.headings, heading{level, text, len(p.lines)})
			slug := slugify(text)
			if n := seen[slug]; n > 0 {
				p.anchors[fmt.Sprintf("%s-%d", slug, n)] = true
			} else {
				p.anchors[slug] = true
			}
			seen[slug]++
		}
		p.lines = append(p.lines, line)
		p.code = append(p.code, inCode)
	}
	pageCache[path] = p
	return p
}

var (
	linkRE       = regexp.MustCompile(`\[([^\]]*)\]\(([^)\s]+)\)`)
	codeSpanRE   = regexp.MustCompile("`[^`]*`")
	slugDropRE   = regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	inlineLinkRE = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// slugify makes a heading's anchor as GitHub makes it: markup dropped, lower
// case, punctuation other than '-' and '_' removed, spaces made '-'.
func slugify(text string) string {
	text = inlineLinkRE.ReplaceAllString(text, "$1")
	text = strings.ToLower(strings.ReplaceAll(text, "`", ""))
	text = slugDropRE.ReplaceAllString(text, "")
	return strings.ReplaceAll(text, " ", "-")
}

// link is a relative link of a page.
type link struct {
	line   int    // 1-based
	file   string // the file it names, absolute
	anchor string // after '#', or ""
	raw    string // as written
}

// links are the relative links of p outside code; "#x" names p itself.
func links(p *page) (out []link) {
	for i, line := range p.lines {
		if p.code[i] {
			continue
		}
		line = codeSpanRE.ReplaceAllString(line, "")
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			target := m[2]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			if file == "" {
				file = p.path
			} else {
				file = filepath.Join(filepath.Dir(p.path), file)
			}
			out = append(out, link{i + 1, absolute(file), anchor, target})
		}
	}
	return out
}

// absolute is path made absolute, so that two names of one file compare equal.
func absolute(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return filepath.Clean(path)
	}
	return abs
}

// TestLinks: every relative link names a file that exists, and every anchor a
// heading of that file.
func TestLinks(t *testing.T) {
	n := 0
	for _, path := range pages(t) {
		p := load(t, path)
		for _, l := range links(p) {
			n++
			st, err := os.Stat(l.file)
			if err != nil {
				t.Errorf("%s:%d: link %q: %v", path, l.line, l.raw, err)
				continue
			}
			if l.anchor == "" {
				continue
			}
			if st.IsDir() || !strings.HasSuffix(l.file, ".md") {
				t.Errorf("%s:%d: link %q: an anchor into a file that is not Markdown", path, l.line, l.raw)
				continue
			}
			if !load(t, l.file).anchors[l.anchor] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor %q", path, l.line, l.raw, l.file, l.anchor)
			}
		}
	}
	if n < 50 {
		t.Errorf("only %d relative links found: the link parser is broken", n)
	}
}

// TestIndexReachesEveryPage: docs/index.md links every page of docs/, and the
// README links the index.
func TestIndexReachesEveryPage(t *testing.T) {
	linked := map[string]bool{}
	for _, l := range links(load(t, "index.md")) {
		linked[l.file] = true
	}
	docs, _ := filepath.Glob("*.md")
	for _, d := range docs {
		if d != "index.md" && !linked[absolute(d)] {
			t.Errorf("docs/index.md does not link %s", d)
		}
	}
	found := false
	for _, l := range links(load(t, "../README.md")) {
		found = found || l.file == absolute("index.md")
	}
	if !found {
		t.Error("README.md does not link docs/index.md")
	}
}

// flag is one flag as --help shows it.
type flag struct{ long, short string }

var helpFlagRE = regexp.MustCompile(`^  (?:-([A-Za-z]), |    )--(?:\[no-\])?([a-z][a-z0-9-]*)`)

// helpFlags runs instarfs with args and --help and returns the flags shown.
func helpFlags(t *testing.T, args ...string) []flag {
	t.Helper()
	out, err := exec.Command(binary, append(args, "--help")...).Output()
	if err != nil {
		t.Fatalf("instarfs %s --help: %v", strings.Join(args, " "), err)
	}
	var flags []flag
	inFlags := false
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case line == "Flags:":
			inFlags = true
		case line == "" || !strings.HasPrefix(line, " "):
			inFlags = false
		case inFlags:
			if m := helpFlagRE.FindStringSubmatch(line); m != nil {
				flags = append(flags, flag{long: "--" + m[2], short: dash(m[1])})
			}
		}
	}
	if len(flags) == 0 {
		t.Fatalf("instarfs %s --help shows no flags:\n%s", strings.Join(args, " "), out)
	}
	return flags
}

func dash(s string) string {
	if s == "" {
		return ""
	}
	return "-" + s
}

// guides says where each command's flags are documented: a page and the
// heading of its section ("" for the whole page).
var guides = []struct{ command, page, section string }{
	{"", "index.md", "Global flags"},
	{"info", "info.md", "info"},
	{"map", "info.md", "map"},
	{"check", "info.md", "check"},
	{"rebase", "rebase.md", ""},
	{"commit", "commit.md", ""},
	{"mount", "mount.md", ""},
	{"sandbox-check", "sandbox.md", "`instarfs sandbox-check`"},
}

// section returns the lines of p under the heading text, up to the next
// heading of the same or a higher level; all of p when text is "".
func section(t *testing.T, p *page, text string) []string {
	t.Helper()
	if text == "" {
		return p.lines
	}
	for i, h := range p.headings {
		if h.text != text {
			continue
		}
		end := len(p.lines)
		for _, next := range p.headings[i+1:] {
			if next.level <= h.level {
				end = next.line
				break
			}
		}
		return p.lines[h.line:end]
	}
	t.Fatalf("%s has no heading %q", p.path, text)
	return nil
}

// known returns the flags of every command ("" is the global ones), long and
// short, as --help shows them.
func known(t *testing.T) (global []flag, commands map[string][]flag) {
	global = helpFlags(t)
	commands = map[string][]flag{}
	for _, g := range guides[1:] {
		commands[g.command] = helpFlags(t, g.command)
	}
	return global, commands
}

// mentions says whether text names the flag f: "--backing" is not named by
// "--backing-format", nor "-b" by "-bx".
func mentions(text, f string) bool {
	re := regexp.MustCompile(`(^|[^\w-])` + regexp.QuoteMeta(f) + `($|[^\w-])`)
	return re.MatchString(text)
}

// TestHelpFlagsInGuides: every flag a command's --help shows, long and short,
// is in its guide; the global flags are in the index.
func TestHelpFlagsInGuides(t *testing.T) {
	global, commands := known(t)
	isGlobal := map[string]bool{}
	for _, f := range global {
		isGlobal[f.long] = true
	}
	for _, g := range guides {
		text := strings.Join(section(t, load(t, g.page), g.section), "\n")
		flags := global
		if g.command != "" {
			flags = commands[g.command]
		}
		for _, f := range flags {
			if g.command != "" && isGlobal[f.long] {
				continue
			}
			for _, name := range []string{f.long, f.short} {
				if name != "" && !mentions(text, name) {
					t.Errorf("instarfs %s --help shows %s; %s (section %q) does not", g.command, name, g.page, g.section)
				}
			}
		}
	}
}

var (
	// commandLineRE finds a line that runs instarfs: in a code block, a
	// table cell or a transcript.
	commandLineRE = regexp.MustCompile("(?:^|[\\s`$|])instarfs((?:\\s+\\S+)+)")
	// controlLineRE finds a write of flags to a control file.
	controlLineRE = regexp.MustCompile(`\becho\s+(.*?)\s*>\s*\S*/(rebase|commit)\b`)
)

// flagTokens returns the flags among the words of a command line, up to the
// end of the command (a pipe, redirection, separator or comment).
func flagTokens(words []string) (flags []string) {
	for _, w := range words {
		if w == "|" || w == "#" || w == "&&" || w == "&" || strings.HasPrefix(w, ">") || strings.HasPrefix(w, "2>") {
			break
		}
		stop := strings.HasSuffix(w, ";")
		w = strings.Trim(w, "[]…;`'\"")
		if strings.HasPrefix(w, "-") && len(w) > 1 && w != "--" {
			name, _, _ := strings.Cut(w, "=")
			if regexp.MustCompile(`^--?[A-Za-z]`).MatchString(name) {
				flags = append(flags, name)
			}
		}
		if stop {
			break
		}
	}
	return flags
}

// TestGuideFlagsExist: every flag the docs show for a command exists: in
// command lines (`instarfs CMD …` anywhere), in control-file writes, and in
// the flag tables of the guides.
func TestGuideFlagsExist(t *testing.T) {
	global, commands := known(t)
	exists := func(command, name string) bool {
		for _, f := range append(append([]flag{}, global...), commands[command]...) {
			if name == f.long || name == f.short {
				return true
			}
		}
		return false
	}
	checked := 0
	for _, path := range pages(t) {
		p := load(t, path)
		for i, line := range p.lines {
			for _, m := range commandLineRE.FindAllStringSubmatch(line, -1) {
				words := strings.Fields(m[1])
				// Global flags may come before the command's name.
				command := ""
				for j, w := range words {
					name := strings.Trim(w, "[]…`")
					if _, ok := commands[name]; ok {
						command = name
						break
					}
					if !strings.HasPrefix(name, "-") {
						break
					}
					_ = j
				}
				if command == "" {
					continue // prose: "instarfs refuses …"
				}
				for _, f := range flagTokens(words) {
					checked++
					if !exists(command, f) {
						t.Errorf("%s:%d: instarfs %s has no flag %s: %s", path, i+1, command, f, strings.TrimSpace(line))
					}
				}
			}
			if !p.code[i] && !strings.HasPrefix(line, "    ") {
				continue
			}
			if m := controlLineRE.FindStringSubmatch(line); m != nil {
				args := strings.Trim(m[1], `'"`)
				for _, f := range flagTokens(strings.Fields(args)) {
					checked++
					if !exists(m[2], f) {
						t.Errorf("%s:%d: the %s control file is shown with %s, which instarfs %s does not have: %s", path, i+1, m[2], f, m[2], strings.TrimSpace(line))
					}
				}
			}
		}
	}
	for _, g := range guides {
		command := g.command
		for _, row := range flagTableRows(section(t, load(t, g.page), g.section)) {
			for _, f := range flagTokens(strings.Fields(strings.ReplaceAll(row, ",", " "))) {
				checked++
				if !exists(command, f) {
					t.Errorf("%s: the flag table shows %s, which instarfs %s does not have", g.page, f, command)
				}
			}
		}
	}
	if checked < 100 {
		t.Errorf("only %d flags checked: the parser is broken", checked)
	}
}

// flagTableRows returns the first cells of the rows of the tables whose first
// column is headed "flag" or "option".
func flagTableRows(lines []string) (cells []string) {
	inTable := false
	for _, line := range lines {
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		first := strings.TrimSpace(strings.SplitN(strings.ReplaceAll(line[1:], `\|`, "/"), "|", 2)[0])
		switch {
		case first == "flag" || first == "option":
			inTable = true
		case inTable && !strings.HasPrefix(first, "---"):
			cells = append(cells, first)
		}
	}
	return cells
}

// fixture makes the images the runnable examples run against: the chain
// base.qcow2 ← overlay.qcow2 ← top.qcow2, new-base.qcow2, and the vmdk chain
// parent.vmdk ← child.vmdk with other.vmdk, a copy of parent.vmdk.
const fixture = `set -euo pipefail
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -c 'write -P 0x11 0 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
qemu-io -c 'write -P 0xaa 64k 64k' overlay.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b overlay.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0xbb 2M 64k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 new-base.qcow2 64M
qemu-io -c 'write -P 0x11 0 512k' new-base.qcow2 >/dev/null
qemu-img create -q -f vmdk parent.vmdk 4M
qemu-io -f vmdk -c 'write -P 0x11 0 1M' parent.vmdk >/dev/null
cp parent.vmdk other.vmdk
qemu-img create -q -f vmdk -b parent.vmdk -F vmdk child.vmdk
`

// example is one runnable block.
type example struct {
	where    string // page:line
	commands []step
}

type step struct {
	command string
	output  []string // what the block shows it prints; none: not compared
}

// examples returns the ```sh blocks under the "Examples" headings of p.
func examples(p *page) (out []example) {
	inExamples, level := false, 0
	for i := 0; i < len(p.lines); i++ {
		line := p.lines[i]
		if !p.code[i] && strings.HasPrefix(line, "#") {
			l := len(line) - len(strings.TrimLeft(line, "#"))
			switch {
			case strings.TrimSpace(line[l:]) == "Examples":
				inExamples, level = true, l
			case l <= level:
				inExamples = false
			}
			continue
		}
		if !inExamples || strings.TrimSpace(line) != "```sh" {
			continue
		}
		ex := example{where: fmt.Sprintf("%s:%d", p.path, i+1)}
		for i++; i < len(p.lines) && strings.TrimSpace(p.lines[i]) != "```"; i++ {
			l := p.lines[i]
			switch {
			case strings.HasPrefix(l, "$ "):
				cmd := strings.TrimPrefix(l, "$ ")
				for strings.HasSuffix(cmd, `\`) && i+1 < len(p.lines) {
					i++
					cmd = strings.TrimSuffix(cmd, `\`) + "\n" + p.lines[i]
				}
				ex.commands = append(ex.commands, step{command: cmd})
			case len(ex.commands) > 0:
				last := &ex.commands[len(ex.commands)-1]
				last.output = append(last.output, l)
			}
		}
		out = append(out, ex)
	}
	return out
}

// matches compares a printed line with a shown one, where "…" stands for any
// text.
func matches(got, shown string) bool {
	parts := strings.Split(shown, "…")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile("^" + strings.Join(parts, ".*") + "$").MatchString(got)
}

// TestExamples runs every runnable example in a directory of fresh images,
// one shell command after another, and compares what each prints (stdout
// and stderr) with what the block shows after it. Every command must exit 0;
// a block shows a failure with `; echo "exit status $?"`.
func TestExamples(t *testing.T) {
	qemutest.NeedQemu(t)
	var all []example
	for _, path := range pages(t) {
		all = append(all, examples(load(t, path))...)
	}
	if len(all) < 4 {
		t.Fatalf("only %d runnable examples found", len(all))
	}
	path := filepath.Dir(binary) + string(os.PathListSeparator) + os.Getenv("PATH")
	for _, ex := range all {
		t.Run(ex.where, func(t *testing.T) {
			if len(ex.commands) == 0 {
				t.Fatal("a runnable block without a command ($ …)")
			}
			dir := t.TempDir()
			sh := exec.Command("bash", "-c", fixture)
			sh.Dir = dir
			if out, err := sh.CombinedOutput(); err != nil {
				t.Fatalf("making the images: %v\n%s", err, out)
			}
			for _, s := range ex.commands {
				cmd := exec.Command("bash", "-c", s.command)
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "PATH="+path, "LC_ALL=C")
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("$ %s\n%s%v", s.command, out, err)
				}
				if s.output == nil {
					continue
				}
				got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
				same := len(got) == len(s.output)
				for i := 0; same && i < len(got); i++ {
					same = matches(got[i], s.output[i])
				}
				if !same {
					t.Errorf("$ %s\nprinted:\n%s\nthe docs show:\n%s", s.command, strings.Join(got, "\n"), strings.Join(s.output, "\n"))
				}
			}
		})
	}
}

// TestEveryExampleSectionRuns: an "Examples" section's shell blocks are
// fenced as sh (runnable) or indented (not run, e.g. through a mount), so
// that a block meant to run is never skipped for a typo in its fence.
func TestEveryExampleSectionRuns(t *testing.T) {
	var bad []string
	for _, path := range pages(t) {
		p := load(t, path)
		inExamples, level := false, 0
		for i, line := range p.lines {
			if !p.code[i] && strings.HasPrefix(line, "#") {
				l := len(line) - len(strings.TrimLeft(line, "#"))
				inExamples = strings.TrimSpace(line[l:]) == "Examples" || inExamples && l > level
				if strings.TrimSpace(line[l:]) == "Examples" {
					level = l
				}
				continue
			}
			if inExamples && strings.HasPrefix(strings.TrimSpace(line), "```") && p.code[i] && (i == 0 || !p.code[i-1]) {
				if f := strings.TrimSpace(line); f != "```sh" {
					bad = append(bad, fmt.Sprintf("%s:%d: %s", path, i+1, f))
				}
			}
		}
	}
	sort.Strings(bad)
	for _, b := range bad {
		t.Errorf("a fenced block under Examples that is not ```sh: %s", b)
	}
}

// TestNamedPathsExist: every repository path the docs name in code spans
// (`vmm/worker/map_test.go`, `integration/`) exists, so that the docs follow
// the code when packages move. Generated directories (bin/, build/) are
// not in the repository.
func TestNamedPathsExist(t *testing.T) {
	top, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[string]bool{}
	for _, e := range top {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && e.Name() != "bin" && e.Name() != "build" {
			dirs[e.Name()] = true
		}
	}
	pathRE := regexp.MustCompile("`([a-z][a-z0-9_]*(?:/[A-Za-z0-9_.-]+)+/?)`")
	n := 0
	for _, path := range pages(t) {
		p := load(t, path)
		for i, line := range p.lines {
			for _, m := range pathRE.FindAllStringSubmatch(line, -1) {
				first, _, _ := strings.Cut(m[1], "/")
				if !dirs[first] {
					continue
				}
				n++
				if _, err := os.Stat(filepath.Join("..", m[1])); err != nil {
					t.Errorf("%s:%d: %s does not exist", path, i+1, m[1])
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d paths checked: the parser is broken", n)
	}
}
