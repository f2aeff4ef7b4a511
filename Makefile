# instarfs build, test and demo.
#
# The worker must be built without cgo: Landlock's thread sync and dropping
# capabilities on every thread fail under cgo.
export CGO_ENABLED := 0
GO ?= go
BIN := bin/instarfs
WORKER := bin/instarfs-worker
PREFIX ?= /usr/local
# What `instarfs --version` prints: the tag the commit carries ("unreleased"
# before the first release) and the commit, "-dirty" when the tree had changes.
VERSION ?= $(shell git describe --tags --exact-match 2>/dev/null || echo unreleased)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
TEST_PACKAGES ?= ./...
FUZZTIME ?= 10s
TESTFLAGS ?=

.PHONY: all build install guest test test-deps oracles lint vet bench fuzz demo docs-images clean

all: build

# build builds instarfs, instarfs-mount and instarfs-worker side by side:
# instarfs runs the worker found next to itself, and for `mount` executes
# instarfs-mount found there, the same command line built without the
# mountexec tag: only that one links the FUSE library (internal/testbin
# builds them the same way). The linker writes its output through a memory
# mapping, which the page cache then holds in single pages, and every start
# of such an executable takes about a millisecond more in page faults; so
# the executables are linked into build/link and copied into bin/ as `make
# install` and package managers write files (docs/performance.md).
LINKED := build/link
MOUNT := bin/instarfs-mount
build:
	$(GO) build -trimpath -tags mountexec -ldflags '$(LDFLAGS)' -o $(LINKED)/instarfs ./cmd/instarfs
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(LINKED)/instarfs-mount ./cmd/instarfs
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(LINKED)/instarfs-worker ./cmd/instarfs-worker
	install -D -m 0755 $(LINKED)/instarfs $(BIN)
	install -D -m 0755 $(LINKED)/instarfs-mount $(MOUNT)
	install -D -m 0755 $(LINKED)/instarfs-worker $(WORKER)

# install copies the three executables to $(DESTDIR)$(PREFIX)/bin, the worker
# executable by all (a worker started by root runs as a uid of its own); the
# microvm guest stays where `make guest` put it: see docs/sandbox.md.
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/instarfs
	install -D -m 0755 $(MOUNT) $(DESTDIR)$(PREFIX)/bin/instarfs-mount
	install -D -m 0755 $(WORKER) $(DESTDIR)$(PREFIX)/bin/instarfs-worker

# guest builds the microvm backend's guest into build/guest: the kernel and
# its virtio modules from the Debian package linux-image-cloud-amd64 of this
# system's suite (downloaded and unpacked, not installed), and an initramfs,
# written by our own code, whose /init is the worker built static.
GUEST := build/guest
guest:
	@set -e; mkdir -p $(GUEST)/deb; \
	pkg=$$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $$2; exit}'); \
	test -n "$$pkg" || { echo "no linux-image-cloud-amd64 in the apt sources (apt-get update?)"; exit 1; }; \
	if [ ! -f $(GUEST)/deb/$$pkg.unpacked ]; then \
	  rm -rf $(GUEST)/deb/*; \
	  (cd $(GUEST)/deb && apt-get download -q $$pkg 2>&1 | grep -v 'unsandboxed' || true); \
	  dpkg-deb -x $(GUEST)/deb/$$pkg*.deb $(GUEST)/deb/root; \
	  rm -f $(GUEST)/deb/$$pkg*.deb; touch $(GUEST)/deb/$$pkg.unpacked; \
	fi
	$(GO) build -trimpath -ldflags='-s -w' -o $(GUEST)/init ./vmm/microvm/guestinit
	$(GO) run ./vmm/microvm/mkguest -root $(GUEST)/deb/root -init $(GUEST)/init -out $(GUEST)

# test-deps installs what the tests need, each command from its Debian
# package: qemu-utils is the oracle; xmllint and rsvg-convert check map.svg;
# rsync is one of the copy tools the mount tests run; qemu-system-x86 runs the
# microvm guest under TCG; cpio reads the initramfs.
TEST_TOOLS := qemu-img:qemu-utils qemu-io:qemu-utils xmllint:libxml2-utils rsvg-convert:librsvg2-bin rsync:rsync fusermount3:fuse3 \
	qemu-system-x86_64:qemu-system-x86 cpio:cpio zstd:zstd
test-deps:
	@missing=$$(for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done | sort -u); \
	if [ -n "$$missing" ]; then \
	  echo "installing" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# oracles builds a second oracle, qemu-img 10.0 from Debian 13, into
# build/oracles/trixie without touching the system's packages (a private apt
# configuration and debootstrap; about a minute and 400 MB the first time).
# The rebase byte-identity tests run against every oracle present.
oracles:
	bash testdata/mkoracles.sh build/oracles/trixie

# -count=1: the end-to-end tests build and run the executables in processes of
# their own, which Go's test cache does not see; a cached "ok" would not have
# run the code as it is now.
test: test-deps oracles guest build vet
	$(GO) test -count=1 $(TESTFLAGS) -timeout 14m $(TEST_PACKAGES)

vet:
	$(GO) vet ./...

lint: vet
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# bench runs the packages' own benchmarks, then instarfs against qemu-img on
# the benchmark sets (integration/bench_test.go: the reference set, an
# independent one of the same shape, a 1 TiB-virtual image) and prints a
# table of medians, ratios, worker starts and worker peak RSS at the end.
# BENCHRUNS runs of each program per operation, alternating which goes first.
# The disk view is measured against qemu-storage-daemon's FUSE export
# (qemu-system-common).
BENCHRUNS ?= 11
bench: test-deps build
	@command -v qemu-storage-daemon >/dev/null || { echo "installing qemu-system-common"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-common >/dev/null; }
	$(GO) test -run '^$$' -bench . -benchtime 20x $$($(GO) list ./... | grep -v /integration$$)
	$(GO) test -run '^$$' -bench 'Ops|Disk' -benchtime $(BENCHRUNS)x -timeout 30m ./integration

# fuzz runs every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 100x $$pkg; \
	  done; done

clean:
	rm -rf bin build

# docs-images renders the pictures the docs show (docs/images/) from a chain
# generated with qemu-img.
docs-images: test-deps build
	bash testdata/docs-images.sh $(BIN) docs/images

demo: build
	bash testdata/demo.sh $(BIN)
