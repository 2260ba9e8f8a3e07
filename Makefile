# containerd-blobcache
GO          ?= go
BIN         ?= bin/containerd-blobcache
TOOLS_DIR   ?= $(CURDIR)/.tools
RUN_DIR     ?= $(CURDIR)/.run
# `make fuzz` (and so `make test`) runs each fuzz target for a number of executions, not for a
# duration: a duration-based -fuzztime races the fuzz coordinator's own deadline in Go 1.26 and
# fails a clean run with "context deadline exceeded" (go.dev/issue/75804, fixed in Go 1.27).
# package:FuzzTarget:executions; each target has a seed corpus in testdata/fuzz/. The counts are
# five to ten seconds each on a 2-core machine, longer when it is loaded.
FUZZ_TARGETS = \
	./plugin/mirror:FuzzParseTarget:60000x \
	./plugin/mirror:FuzzParseRange:60000x \
	./plugin/mirror:FuzzRelayChallenge:40000x \
	./resolver:FuzzEndpoint:60000x \
	./resolver:FuzzParseChallenges:60000x \
	./internal/config:FuzzParse:40000x
# FUZZTIME, when set (for example `make fuzz FUZZTIME=5m` for a longer local hunt), replaces
# every count; a duration is subject to the Go 1.26 race above.
FUZZTIME    ?=

.PHONY: all build run test unit integration tools vet fmt clean fuzz bench

all: build

build:
	$(GO) build -o $(BIN) ./cmd/containerd-blobcache

# Runs the daemon on embedded defaults, with its state in a folder of the repo so that it
# needs no root.
run: build
	$(BIN) serve --root $(RUN_DIR) --admin-address $(RUN_DIR)/admin.sock

# Installs the pinned containerd, ctr, shim, registry and crictl the integration tests need.
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

# Runs each fuzz target on top of its committed seed corpus (go test -fuzz takes one target at
# a time). -timeout bounds a target whose inputs have become slow.
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${rest#*:}; \
		if [ -n "$(FUZZTIME)" ]; then budget="$(FUZZTIME)"; fi; \
		echo "fuzz $$name ($$pkg) for $$budget"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime "$$budget" -timeout 10m $$pkg; \
	done

# Every test: unit tests and the integration suite against a real containerd and registry,
# and every fuzz target for its execution count.
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
