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
# The version the binary reports (`version`, the start-up log line, build_info in /metrics,
# `stats`): git describe of the checkout, "dev" outside git.
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X github.com/containerd-blobcache/containerd-blobcache/internal/version.Version=$(VERSION)

# `make image`: the daemon's OCI image as an oci-archive (bin/containerd-blobcache.oci.tar),
# built without a container engine. Load it with `ctr -n k8s.io image import FILE`,
# `skopeo copy oci-archive:FILE docker://REGISTRY/...` or `podman load -i FILE`.
IMAGE       ?= ghcr.io/containerd-blobcache/containerd-blobcache:$(VERSION)
IMAGE_ARCH  ?= $(shell $(GO) env GOARCH)

.PHONY: all build run test unit integration deps bench-deps tools vet fmt clean fuzz bench bench-unit image helm-test

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/containerd-blobcache

image:
	@mkdir -p bin/image
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath \
		-ldflags "-s -w -X github.com/containerd-blobcache/containerd-blobcache/internal/version.Version=$(VERSION)" \
		-o bin/image/containerd-blobcache ./cmd/containerd-blobcache
	$(GO) run ./hack/image --binary bin/image/containerd-blobcache --name $(IMAGE) --arch $(IMAGE_ARCH) \
		--version $(VERSION) --out bin/containerd-blobcache.oci.tar

# Runs the daemon on embedded defaults, with its state in a folder of the repo so that it
# needs no root.
run: build
	$(BIN) serve --root $(RUN_DIR) --admin-address $(RUN_DIR)/admin.sock

# Installs (as root) or checks the Debian packages the tests use; nothing when all are there.
deps:
	./.ci/install-deps

# The same, with the benchmark's packages (nginx-light).
bench-deps:
	./.ci/install-deps --bench

# Installs the pinned containerd, ctr, shim, registry, conformance suite and crictl the
# integration tests need.
tools:
	TOOLS_DIR=$(TOOLS_DIR) ./.ci/install-tools

vet:
	$(GO) vet ./...
	$(GO) vet -tags bench ./integration/bench/

fmt:
	gofmt -l -w $$(git ls-files '*.go')

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

integration: deps tools
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
# and every fuzz target for its execution count. It installs what it needs first: the Debian
# packages (deps, as root) and the pinned tools.
test: deps tools vet fuzz helm-test bench-unit
	BLOBCACHE_TOOLS_DIR=$(TOOLS_DIR)/bin $(GO) test -race -count=1 -timeout 50m ./...

# The Helm chart rendered with the Helm library and checked against the binary; a Go module
# of its own (contrib/helm/test/go.mod) so that Helm's dependencies stay out of go.mod.
helm-test:
	cd contrib/helm/test && $(GO) vet ./... && $(GO) test -count=1 -timeout 15m ./...

# The benchmark's own unit tests (its report table, statistics, slow link); they carry the
# bench build tag with it, so ./... leaves them out. TestBench itself is make bench.
bench-unit:
	$(GO) test -race -count=1 -tags bench -skip '^TestBench$$' ./integration/bench/

# Side-by-side benchmarks (docs/BENCHMARKS.md): containerd-blobcache against a direct pull,
# distribution as a pull-through proxy and nginx, on loopback. Needs root. Prints one markdown
# table at the end (also written to bin/bench.md). BENCH_RUNS, BENCH_SCALE and the other
# BENCH_* variables of integration/bench/bench_test.go make it smaller for a quick look.
bench: bench-deps tools
	@mkdir -p bin
	BLOBCACHE_TOOLS_DIR=$(TOOLS_DIR)/bin BENCH_OUT=$(CURDIR)/bin/bench.md BENCH_COMMAND="make bench" \
		$(GO) test -tags bench -count=1 -timeout 60m -run TestBench -v ./integration/bench/
	@echo; cat bin/bench.md

clean:
	rm -rf bin $(RUN_DIR)
