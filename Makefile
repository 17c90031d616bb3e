# imakexec — see README.md. `make demo` and `make test` are the two commands a new machine
# needs; both install what they use.

GO        ?= go
BIN       := bin/imakexec
STATICCHECK_VERSION := v0.8.2
export GOTOOLCHAIN := local

.PHONY: all build deps test test-unit bench fuzz lint demo clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/imakexec

deps:
	./scripts/install-deps.sh

# Unit and FUSE-model tests under the race detector (-short: the VM tests run once, in
# the second run), then everything with the VM tests, then the pure unit tests as arm64
# (qemu-user) and 386; nothing is skipped under CI=true.
test: deps
	$(GO) vet ./...
	$(GO) test -race -short -count=1 ./...
	$(GO) test -timeout 60m -count=1 ./...
	./scripts/cross-arch.sh test

# Without the VM tests (quick loop while developing).
test-unit:
	$(GO) test -short -count=1 ./...

bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem ./serialize/...
	$(GO) test -run '^$$' -bench 'Drain|RejoinVerify|Verify' -benchtime 3x ./handover/...
	$(GO) test -run '^$$' -bench 'DrainCLI' -benchtime 1x ./cmd/imakexec
	$(GO) run ./internal/cmd/benchcmp -imakexec $(BIN) -dir out/bench

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
