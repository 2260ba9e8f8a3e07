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

.PHONY: all build run test unit integration tools vet fmt clean fuzz

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

clean:
	rm -rf bin $(RUN_DIR)
