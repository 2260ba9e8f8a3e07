# containerd-blobcache
GO          ?= go
BIN         ?= bin/containerd-blobcache
TOOLS_DIR   ?= $(CURDIR)/.tools
RUN_DIR     ?= $(CURDIR)/.run
# How long each fuzz target runs in `make fuzz` (and so in `make test`).
FUZZTIME    ?= 10s
# package:FuzzTarget pairs run by `make fuzz`; each has a seed corpus in testdata/fuzz/.
FUZZ_TARGETS = \
	./plugin/mirror:FuzzParseTarget \
	./plugin/mirror:FuzzParseRange \
	./plugin/mirror:FuzzRelayChallenge \
	./resolver:FuzzEndpoint \
	./resolver:FuzzParseChallenges \
	./internal/config:FuzzParse

.PHONY: all build run test unit integration tools vet fmt clean fuzz bench

all: build

build:
	$(GO) build -o $(BIN) ./cmd/containerd-blobcache

# Runs the daemon on embedded defaults, with its state in a folder of the repo so that it
# needs no root.
run: build
	$(BIN) serve --root $(RUN_DIR) --admin-address $(RUN_DIR)/admin.sock

# Installs the pinned containerd, ctr, shim and registry the integration tests need.
tools:
	TOOLS_DIR=$(TOOLS_DIR) ./.ci/install-tools

vet:
	$(GO) vet ./...
	$(GO) vet -tags bench ./integration/bench/

fmt:
	gofmt -l -w $$(git ls-files '*.go')

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

integration: tools
	BLOBCACHE_TOOLS_DIR=$(TOOLS_DIR)/bin $(GO) test -race -count=1 -timeout 40m -v ./integration/...

# Runs each fuzz target for FUZZTIME on top of its committed seed corpus (go test -fuzz takes
# one target at a time).
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# Every test: unit tests and the integration suite against a real containerd and registry,
# and every fuzz target for FUZZTIME.
test: tools vet fuzz
	BLOBCACHE_TOOLS_DIR=$(TOOLS_DIR)/bin $(GO) test -race -count=1 -timeout 50m ./...

# Side-by-side benchmarks (docs/BENCHMARKS.md): containerd-blobcache against a direct pull,
# distribution as a pull-through proxy and nginx, on loopback. Needs root. Prints one markdown
# table at the end (also written to bin/bench.md). BENCH_RUNS, BENCH_SCALE and the other
# BENCH_* variables of integration/bench/bench_test.go make it smaller for a quick look.
bench: tools
	./.ci/install-bench-deps
	@mkdir -p bin
	BLOBCACHE_TOOLS_DIR=$(TOOLS_DIR)/bin BENCH_OUT=$(CURDIR)/bin/bench.md BENCH_COMMAND="make bench" \
		$(GO) test -tags bench -count=1 -timeout 60m -run TestBench -v ./integration/bench/
	@echo; cat bin/bench.md

clean:
	rm -rf bin $(RUN_DIR)
