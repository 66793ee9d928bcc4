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

.PHONY: build run test test-go test-e2b proto proto-check bench fuzz vet clean

## build: static, stripped release binary with version and commit stamped.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/envd

## run: envd on this machine (not in a VM), port $(PORT).
run: build
	./$(BIN) --isnotfc --port $(PORT)

## test: every test suite (Go unit + end-to-end against the built binary).
test: build test-go

test-go:
	ENVD_BIN=$(CURDIR)/$(BIN) $(GO) test $(TESTFLAGS) ./...

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

## bench: performance figures (filled in by the bench command).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 1x ./... 

vet:
	$(GO) vet ./...

clean:
	rm -rf bin .bin
