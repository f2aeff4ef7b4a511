# instarfs build, test and demo.
#
# The worker must be built without cgo: Landlock's thread sync and dropping
# capabilities on every thread fail under cgo.
export CGO_ENABLED := 0
GO ?= go
BIN := bin/instarfs
TEST_PACKAGES ?= ./...
FUZZTIME ?= 10s
TESTFLAGS ?=

.PHONY: all build test test-deps oracles lint vet bench fuzz demo clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/instarfs

# test-deps installs what the tests need: qemu-utils is the oracle.
test-deps:
	@command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || { \
	  echo "installing qemu-utils (the test oracle)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null; }

# oracles builds a second oracle, qemu-img 10.0 from Debian 13, into
# build/oracles/trixie without touching the system's packages (a private apt
# configuration and debootstrap; about a minute and 400 MB the first time).
# The rebase byte-identity tests run against every oracle present.
oracles:
	bash testdata/mkoracles.sh build/oracles/trixie

test: test-deps oracles build vet
	$(GO) test $(TESTFLAGS) -timeout 14m $(TEST_PACKAGES)

vet:
	$(GO) vet ./...

lint: vet
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The changing benchmarks (rebase, commit) copy their images before every run,
# outside the timer; 5 runs keep them within a few minutes.
bench: test-deps build
	$(GO) test -run '^$$' -bench . -skip 'Rebase|Commit' -benchtime 20x ./...
	$(GO) test -run '^$$' -bench 'Rebase|Commit' -benchtime 5x ./integration

# fuzz runs every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 100x $$pkg; \
	  done; done

clean:
	rm -rf bin build

demo: build
	bash testdata/demo.sh $(BIN)
