# imakexec — see README.md. `make demo` and `make test` are the two commands a new machine
# needs; both install what they use.

GO        ?= go
BIN       := bin/imakexec
STATICCHECK_VERSION := v0.8.2
export GOTOOLCHAIN := local

.PHONY: all build deps kernels test test-unit bench bench-host fuzz lint demo clean install deb man

all: build

# Version: a VERSION file (release tarballs) wins, else git describe.
VERSION   ?= $(shell cat VERSION 2>/dev/null || git describe --tags --always --dirty 2>/dev/null || echo 0.0.0)
LDFLAGS   := -s -w -X main.version=$(VERSION)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/imakexec

man: build
	mkdir -p out
	$(GO) run ./internal/cmd/mangen -bin $(BIN) -version '$(VERSION)' > out/imakexec.8

# make install [PREFIX=/usr] [DESTDIR=...]: the binary, the systemd units and shutdown hook,
# the initramfs-tools hook and script, the dracut module, the man page.
PREFIX    ?= /usr
BINDIR    ?= $(PREFIX)/bin
UNITDIR   ?= $(PREFIX)/lib/systemd/system
SHUTDOWNDIR ?= $(PREFIX)/lib/systemd/system-shutdown
INITRAMFSTOOLSDIR ?= $(PREFIX)/share/initramfs-tools
DRACUTDIR ?= $(PREFIX)/lib/dracut
MANDIR    ?= $(PREFIX)/share/man
DOCDIR    ?= $(PREFIX)/share/doc/imakexec
install: build man
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/imakexec
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	for u in dist/systemd/*.service dist/systemd/*.timer dist/systemd/*.target; do \
		sed 's|/usr/bin/imakexec|$(BINDIR)/imakexec|g' "$$u" > $(DESTDIR)$(UNITDIR)/$$(basename "$$u") || exit 1; \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename "$$u"); done
	install -d -m 0755 $(DESTDIR)$(SHUTDOWNDIR)
	sed 's|/usr/bin/imakexec|$(BINDIR)/imakexec|g' dist/system-shutdown/imakexec > $(DESTDIR)$(SHUTDOWNDIR)/imakexec
	chmod 0755 $(DESTDIR)$(SHUTDOWNDIR)/imakexec
	install -D -m 0755 dist/initramfs-tools/hooks/imakexec $(DESTDIR)$(INITRAMFSTOOLSDIR)/hooks/imakexec
	install -D -m 0755 dist/initramfs-tools/scripts/init-bottom/imakexec $(DESTDIR)$(INITRAMFSTOOLSDIR)/scripts/init-bottom/imakexec
	install -D -m 0755 dist/dracut/90imakexec/module-setup.sh $(DESTDIR)$(DRACUTDIR)/modules.d/90imakexec/module-setup.sh
	install -D -m 0755 dist/dracut/90imakexec/imakexec-keep-handoff.sh $(DESTDIR)$(DRACUTDIR)/modules.d/90imakexec/imakexec-keep-handoff.sh
	install -D -m 0644 dist/dracut/90imakexec.conf $(DESTDIR)$(DRACUTDIR)/dracut.conf.d/90imakexec.conf
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man8
	gzip -9n < out/imakexec.8 > $(DESTDIR)$(MANDIR)/man8/imakexec.8.gz
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md

# make deb: out/imakexec_<version>_<arch>.deb with dpkg-deb, from this tree.
DEBARCH   ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
deb:
	rm -rf out/deb && mkdir -p out/deb
	$(MAKE) install DESTDIR=$(CURDIR)/out/deb PREFIX=/usr
	scripts/mkdeb.sh out/deb '$(VERSION)' '$(DEBARCH)' out

deps:
	./scripts/install-deps.sh

# Every kernel the VM tests boot, fetched or built once into the cache ($$IMAKEXEC_CACHE,
# default /var/cache/imakexec) unless the shared folder has it (scripts/kernels.sh).
kernels: deps
	./scripts/kernels.sh

# Unit and FUSE-model tests under the race detector (the packages below testvm/ boot VMs,
# even under -short when CI is set, so they run once, in the second run), then everything
# with the VM tests, then the pure unit tests as arm64 (qemu-user) and 386; nothing is
# skipped under CI=true.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/testvm')
test: deps kernels
	$(GO) vet ./...
	$(GO) test -race -short -count=1 $(UNIT_PKGS)
	$(GO) test -timeout 60m -count=1 ./...
	./scripts/cross-arch.sh test

# Without the VM tests (quick loop while developing).
test-unit:
	$(GO) test -short -count=1 ./...

bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem ./serialize/...
	$(GO) test -run '^$$' -bench 'Drain|RejoinVerify|Verify' -benchtime 3x ./handover/...
	$(GO) test -run '^$$' -bench 'DrainCLI' -benchtime 1x ./cmd/imakexec
	$(GO) test -run '^$$' -bench 'View|ServeCLI' -benchtime 3x ./handover/view/
	$(GO) run ./internal/cmd/benchcmp -imakexec $(BIN) -dir out/bench

# The round trip of a clean systemctl kexec with and without imakexec in the same systemd
# host VM (QEMU under TCG, several minutes).
bench-host: deps
	IMAKEXEC_HOST_BASELINE=1 $(GO) test -count=1 -v -timeout 40m -run '^TestSystemdHostTCB$$' ./testvm/host

# Each fuzzer for FUZZTIME (new inputs are minimized for at most a second).
FUZZTIME ?= 30s
fuzz:
	for f in FuzzBinaryReader FuzzKexecReader FuzzASCIIReader FuzzTemplateFields; do \
		$(GO) test ./serialize -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s || exit 1; done
	for f in FuzzWalk FuzzHandoff; do \
		$(GO) test ./initramfs -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s || exit 1; done
	$(GO) test ./handover -run '^$$' -fuzz '^FuzzManifest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s
	$(GO) test ./internal/kcmdline -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s

# vet and staticcheck, and builds + vet for amd64, arm64 and 386 (scripts/cross-arch.sh).
lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	./scripts/cross-arch.sh vet

# The Debian-kernel scenario with two kexecs in QEMU + swtpm, and a readable report.
demo: deps build
	$(GO) run ./testvm/cmd/demo

clean:
	rm -rf bin out
