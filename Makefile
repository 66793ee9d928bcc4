# envd — build, run, test.
SHELL := /bin/bash
GO ?= go
VERSION := $(shell cat VERSION)
COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
PKG := github.com/envd/envd
LDFLAGS := -s -w -X $(PKG)/internal/version.Version=$(VERSION) -X $(PKG)/internal/version.Commit=$(COMMIT)
BIN := bin/envd
PORT ?= 49983
# Go test flags; CI uses the defaults.
TESTFLAGS ?= -race -timeout 15m

.PHONY: build envdctl run test test-go test-e2b proto proto-check bench fuzz vet clean vm-test

## build: static, stripped release binary with version and commit stamped.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/envd

## envdctl: the operator's CLI (static, stripped, like build).
envdctl:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/envdctl ./cmd/envdctl

## run: envd on this machine (not in a VM), port $(PORT).
run: build
	./$(BIN) --isnotfc --port $(PORT)

## test: every test suite (Go unit + end-to-end against the built binary,
## then the official E2B JS SDK against it).
test: build test-go test-e2b

test-go:
	ENVD_BIN=$(CURDIR)/$(BIN) $(GO) test $(TESTFLAGS) ./...

## test-e2b: the E2B SDK conformance suite (npm e2b in debug mode, Node's
## test runner) against the built binary; one envd per test file.
test-e2b: build test/e2b/node_modules
	cd test/e2b && ENVD_BIN=$(CURDIR)/$(BIN) node --test --test-concurrency=2 tests/

test/e2b/node_modules: test/e2b/package.json test/e2b/package-lock.json
	cd test/e2b && npm ci --no-audit --no-fund
	@touch $@

## vm-test: envd as PID 1 in a QEMU microvm (TCG): boot, drive, 20 snapshot/
## restore cycles, clones, shutdown (docs/vm-testing.md). Needs Debian's
## qemu-system-x86 and xz-utils and apt lists (apt-get update); downloads the
## stock kernel and busybox-static once into test/vm/work/.
vm-test: build
	ENVD_BIN=$(CURDIR)/$(BIN) $(GO) test -tags vm -run 'TestVM$$' -v -count=1 -timeout 20m ./test/vm/

## proto: regenerate gen/ from proto/ (protoc from Debian's protobuf-compiler;
## generator versions are pinned in go.mod's tool block).
proto:
	@mkdir -p .bin
	$(GO) build -o .bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o .bin/protoc-gen-connect-go connectrpc.com/connect/cmd/protoc-gen-connect-go
	PATH=$(CURDIR)/.bin:$$PATH protoc -I proto \
		--go_out=. --go_opt=module=$(PKG) \
		--connect-go_out=. --connect-go_opt=module=$(PKG) \
		proto/process.proto proto/filesystem.proto

## proto-check: fail if gen/ is not what proto/ generates.
proto-check: proto
	git diff --exit-code -- gen/

## bench: performance figures (docs/performance.md). Starts bin/envd itself;
## BENCHFLAGS="--addr URL" also measures an already running daemon with the
## same workload, e.g. make bench BENCHFLAGS="--addr other=http://127.0.0.1:49983".
BENCHFLAGS ?=
bench: build
	$(GO) build -o bin/envd-bench ./cmd/envd-bench
	./bin/envd-bench --bin $(BIN) $(BENCHFLAGS)

vet:
	$(GO) vet ./...

clean:
	rm -rf bin .bin
