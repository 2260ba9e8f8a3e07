# containerd-blobcache
GO          ?= go
BIN         ?= bin/containerd-blobcache
TOOLS_DIR   ?= $(CURDIR)/.tools
RUN_DIR     ?= $(CURDIR)/.run

.PHONY: all build run test unit integration tools vet fmt clean

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

# Every test: unit tests and the integration suite against a real containerd and registry.
test: tools vet
	BLOBCACHE_TOOLS_DIR=$(TOOLS_DIR)/bin $(GO) test -race -count=1 -timeout 50m ./...

clean:
	rm -rf bin $(RUN_DIR)
