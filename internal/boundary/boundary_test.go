// Package boundary keeps the trust boundary visible in the import graph.
//
// Only the worker parses image bytes. The format packages sit under
// vmm/worker/internal, so the compiler already refuses any other importer;
// this test states the rest of the rule, which the compiler cannot: who may
// import the planners and the worker, which host packages must not depend on
// running workers at all, and what each of the executables, instarfs,
// instarfs-mount and instarfs-worker, must not link.
package boundary

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"instarfs/internal/testbin"
)

const module = "instarfs"

// rules: a package matching pkg, unless it is one of exempt, must not import
// a package matching forbidden, unless that one is among fine. Patterns end
// in "/..." to mean a package and everything below it.
var rules = []struct {
	pkg       string
	exempt    []string
	forbidden []string
	fine      []string
	why       string
}{
	{
		pkg:       "instarfs/...",
		exempt:    []string{"instarfs/vmm/worker/...", "instarfs/planners/..."},
		forbidden: []string{"instarfs/planners/..."},
		why:       "the planners turn image metadata into writes: only the worker runs them",
	},
	{
		pkg:       "instarfs/...",
		forbidden: []string{"instarfs/vmm/worker/..."},
		exempt: []string{
			"instarfs/vmm/worker/...",
			// The worker's executable, and the microvm guest's /init,
			// which is the worker.
			"instarfs/cmd/instarfs-worker", "instarfs/vmm/microvm/guest",
			// Its tests' TestMain makes the test binary its own worker;
			// what the executable links is TestLinked's.
			"instarfs/cmd/instarfs",
		},
		why: "host packages reach the worker only through a sandbox",
	},
	{
		pkg:       "instarfs/chainmodel/...",
		forbidden: []string{"instarfs/vmm/...", "instarfs/ctl/...", "instarfs/fs/..."},
		why:       "the chain model and path policy do not run workers",
	},
	{
		pkg:       "instarfs/proto/...",
		forbidden: []string{"instarfs/..."},
		fine:      []string{"instarfs/errcode", "instarfs/proto/..."},
		why:       "the protocol is shared by both sides and depends on neither",
	},
}

func match(pattern, pkg string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == base || strings.HasPrefix(pkg, base+"/")
	}
	return pkg == pattern
}

func matchAny(patterns []string, pkg string) bool {
	for _, p := range patterns {
		if match(p, pkg) {
			return true
		}
	}
	return false
}

// imports maps each package of the module, tests included, to what its
// files import.
func imports(t *testing.T, root string) map[string]map[string]bool {
	t.Helper()
	graph := map[string]map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "build") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkg := module
		if rel != "." {
			pkg += "/" + filepath.ToSlash(rel)
		}
		if graph[pkg] == nil {
			graph[pkg] = map[string]bool{}
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			graph[pkg][p] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return graph
}

// refused says why pkg may not import imp, or "" when it may.
func refused(pkg, imp string) string {
	for _, r := range rules {
		if match(r.pkg, pkg) && !matchAny(r.exempt, pkg) && matchAny(r.forbidden, imp) && !matchAny(r.fine, imp) {
			return r.why
		}
	}
	return ""
}

func TestImportRules(t *testing.T) {
	graph := imports(t, filepath.Join("..", ".."))
	for _, p := range []string{"instarfs/ctl", "instarfs/vmm/worker", "instarfs/planners"} {
		if graph[p] == nil {
			t.Fatalf("package %s not found: the walk did not see the module", p)
		}
	}
	for pkg, imps := range graph {
		for imp := range imps {
			if why := refused(pkg, imp); why != "" {
				t.Errorf("%s imports %s: %s", pkg, imp, why)
			}
		}
	}
}

// TestRulesRefuse checks the rules on made-up imports: each must be refused.
func TestRulesRefuse(t *testing.T) {
	for _, c := range [][2]string{
		{"instarfs/fs", "instarfs/planners"},
		{"instarfs/ctl", "instarfs/vmm/worker"},
		{"instarfs/diskview", "instarfs/vmm/worker/internal/qcow2"},
		{"instarfs/chainmodel", "instarfs/vmm"},
		{"instarfs/proto", "instarfs/chainmodel"},
	} {
		if refused(c[0], c[1]) == "" {
			t.Errorf("no rule refuses %s importing %s", c[0], c[1])
		}
	}
	for _, c := range [][2]string{
		{"instarfs/vmm/worker", "instarfs/planners"},
		{"instarfs/cmd/instarfs-worker", "instarfs/vmm/worker"},
		{"instarfs/proto", "instarfs/errcode"},
	} {
		if why := refused(c[0], c[1]); why != "" {
			t.Errorf("%s importing %s refused: %s", c[0], c[1], why)
		}
	}
}

// forbidden: what each executable of the product (testbin.Executables) must
// not link, at any depth, and why. The host holds no image parser at all,
// and only the executable that mounts links the FUSE library; the worker
// holds nothing of the host: no FUSE, command line or logging library, nor
// the host's packages.
var forbidden = map[string]struct {
	packages []string
	why      string
}{
	"instarfs": {
		[]string{"instarfs/vmm/worker/...", "instarfs/planners/...", "instarfs/vmm/microvm/guest", "github.com/hanwen/go-fuse/...", "instarfs/fs/..."},
		"the host executable contains no image parser, and no FUSE library: it runs instarfs-worker, and instarfs-mount to mount",
	},
	"instarfs-mount": {
		[]string{"instarfs/vmm/worker/...", "instarfs/planners/...", "instarfs/vmm/microvm/guest"},
		"the mount's executable contains no image parser: it runs instarfs-worker",
	},
	"instarfs-worker": {
		[]string{
			"github.com/hanwen/go-fuse/...", "github.com/alecthomas/kingpin/...",
			"instarfs/fs/...", "instarfs/ctl/...", "instarfs/chainmodel/...", "instarfs/diskview/...",
		},
		"the worker executable contains nothing of the host",
	},
}

// deps returns the packages e links (go list -deps, without tests), as the
// Makefile builds it.
func deps(t *testing.T, e testbin.Executable) []string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	list := exec.Command("go", "list", "-deps", "-tags", e.Tags, e.Package)
	list.Dir = filepath.Join("..", "..")
	list.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list -deps -tags %q %s: %v", e.Tags, e.Package, err)
	}
	return strings.Fields(string(out))
}

func TestLinked(t *testing.T) {
	if len(forbidden) != len(testbin.Executables) {
		t.Fatalf("rules for %d executables, %d executables", len(forbidden), len(testbin.Executables))
	}
	for _, e := range testbin.Executables {
		t.Run(e.Name, func(t *testing.T) {
			rule, ok := forbidden[e.Name]
			if !ok {
				t.Fatalf("no rule for %s", e.Name)
			}
			linked := deps(t, e)
			if len(linked) < 10 || linked[len(linked)-1] != e.Package {
				t.Fatalf("go list -deps %s listed %d packages, ending %v", e.Package, len(linked), linked[len(linked)-1:])
			}
			for _, pkg := range linked {
				if matchAny(rule.packages, pkg) {
					t.Errorf("%s links %s: %s", e.Name, pkg, rule.why)
				}
			}
		})
	}
}

// TestLinkedRefuses checks the executables' rules on made-up packages.
func TestLinkedRefuses(t *testing.T) {
	for _, c := range [][2]string{
		{"instarfs", "instarfs/vmm/worker"},
		{"instarfs", "instarfs/vmm/worker/internal/qcow2"},
		{"instarfs", "instarfs/planners"},
		{"instarfs", "github.com/hanwen/go-fuse/v2/fuse"},
		{"instarfs", "instarfs/fs"},
		{"instarfs-mount", "instarfs/vmm/worker"},
		{"instarfs-worker", "github.com/hanwen/go-fuse/v2/fuse"},
		{"instarfs-worker", "github.com/alecthomas/kingpin/v2"},
		{"instarfs-worker", "instarfs/chainmodel"},
		{"instarfs-worker", "instarfs/fs"},
		{"instarfs-worker", "instarfs/ctl/mapsvg"},
	} {
		if !matchAny(forbidden[c[0]].packages, c[1]) {
			t.Errorf("no rule refuses %s linking %s", c[0], c[1])
		}
	}
}
