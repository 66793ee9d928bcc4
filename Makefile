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

.PHONY: build envdctl run test deps test-go test-e2b proto proto-check lint bench fuzz vet clean vm-test

## build: static, stripped release binary with version and commit stamped.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/envd

## envdctl: the operator's CLI (static, stripped, like build).
envdctl:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/envdctl ./cmd/envdctl

## run: envd on this machine (not in a VM), port $(PORT).
run: build
	./$(BIN) --isnotfc --port $(PORT)

## test: every test suite — Go unit and end-to-end tests against the built
## binary, the official E2B JS SDK against it, and envd as PID 1 in a QEMU
## microvm. Run as root on Linux; missing system packages are installed.
test: deps build test-go test-e2b vm-test

# Debian packages the tests use; installed with apt-get when missing.
TEST_DEPS := ip:iproute2 unshare:util-linux useradd:passwd ps:procps curl:curl \
	qemu-system-x86_64:qemu-system-x86 xz:xz-utils node:nodejs npm:npm

## deps: install the system packages the tests need (root; Debian/Ubuntu).
deps:
	@missing=""; for pair in $(TEST_DEPS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "tests need root and these packages:$$missing" >&2; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi; \
	if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then \
		echo "refreshing apt lists (the VM test downloads Debian's kernel)"; apt-get update -qq; \
	fi

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

## proto: regenerate gen/ from proto/ with buf and the generators pinned in
## go.mod's tool block (no protoc needed).
proto:
	@mkdir -p .bin
	$(GO) build -o .bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o .bin/protoc-gen-connect-go connectrpc.com/connect/cmd/protoc-gen-connect-go
	$(GO) tool buf generate

## proto-check: fail if gen/ (and the handover record's internal package)
## is not what proto/ generates.
proto-check: proto
	git diff --exit-code -- gen/ internal/handover/handoverpb/
	@test -z "$$(git status --porcelain -- gen/ internal/handover/handoverpb/)" || { git status --short -- gen/ internal/handover/handoverpb/; exit 1; }

## lint: vet, staticcheck, a tidy module, and the protos: buf lint and buf
## breaking against the wire format released at protocol level 0.6.4
## (proto/compat/envd-0.6.4.binpb). Tools are pinned in go.mod's tool block.
lint:
	$(GO) vet ./...
	$(GO) vet -tags vm ./test/vm/...
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags vm ./test/vm/...
	$(GO) mod tidy -diff
	$(GO) tool buf lint
	$(GO) tool buf breaking --against proto/compat/envd-0.6.4.binpb

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
