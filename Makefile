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

# Unit, FUSE-model and VM tests together; nothing is skipped under CI=true.
test: deps
	$(GO) vet ./...
	$(GO) test -timeout 60m -count=1 ./...

# Without the VM tests (quick loop while developing).
test-unit:
	$(GO) test -short -count=1 ./...

bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem ./serialize/...
	$(GO) test -run '^$$' -bench 'Drain|RejoinVerify|Verify' -benchtime 3x ./handover/...
	$(GO) test -run '^$$' -bench 'View|ServeCLI' -benchtime 3x ./handover/view/
	$(GO) run ./internal/cmd/benchcmp -imakexec $(BIN) -dir out/bench

# Each fuzzer for FUZZTIME (new inputs are minimized for at most a second).
FUZZTIME ?= 30s
fuzz:
	for f in FuzzBinaryReader FuzzKexecReader FuzzASCIIReader FuzzTemplateFields; do \
		$(GO) test ./serialize -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s || exit 1; done
	$(GO) test ./initramfs -run '^$$' -fuzz '^FuzzWalk$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# The Debian-kernel scenario with two kexecs in QEMU + swtpm, and a readable report.
demo: deps build
	$(GO) run ./testvm/cmd/demo

clean:
	rm -rf bin out
