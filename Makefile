# ptcombiner: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/ptcombiner/ptcombiner/internal/runner.Version=$(VERSION)
# How long each fuzz target runs in `make fuzz` (the seed corpora always run in `make test`).
FUZZTIME ?= 30s

.PHONY: all build deb demo demo-network demo-snowflake test test-short fuzz bench ptbench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/... ./test/testpt

# The Debian package, in $(BIN)/: both programs, their man pages, the guides and
# the AppArmor rules Debian's tor needs (packaging/deb/build.sh, docs/bridge.md).
deb:
	VERSION=$(VERSION) GO=$(GO) packaging/deb/build.sh $(BIN)

# A local chain end to end: obfs4proxy when installed, else the project's test PT.
demo: build
	$(GO) run ./test/demo -bin $(BIN)

# The most convincing demonstration: a private Tor network on loopback (authority,
# exit, bridge with three ptcombiner-servers, a client with ptcombiner-client per
# chain) for five chains, through obfs4proxy, in-process (--builtin) and mixed;
# each client reaches 100% and fetches a page and a 2 MiB blob.
demo-network:
	$(GO) test -count=1 -run '^TestPrivateTorNetwork$$' -v ./test/ 2>&1 | grep -v 'level=' | grep -E 'network_test|^(--- |    ---|ok|FAIL|PASS)'

# obfs4 inside snowflake through both combiners, on a private Tor network in a
# private network namespace (root; skipped, with the reason, where the machine
# refuses one). It builds snowflake's server and broker from the Go module proxy.
demo-snowflake:
	$(GO) test -count=1 -run '^TestPrivateTorNetworkSnowflake$$' -v ./test/ 2>&1 | grep -v 'level=' | grep -E 'snowflake_test|^(--- |    ---|ok|FAIL|PASS)'

# Every test, with the race detector: unit tests, fuzz seed corpora, integration
# tests against real obfs4proxy, and end-to-end tests with real tor; then the
# Debian package, built, installed and run by tor as debian-tor (as root only);
# the private Tor networks run last, verbose, so that their timings show.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 40m -skip '^(TestPrivateTorNetwork|TestPrivateTorNetworkSnowflake|TestDebPackage)$$' ./...
	$(GO) test -count=1 -run 'AllocatesNothing' ./shim/
	$(GO) test -count=1 -run '^TestDebPackage$$' -v ./test/
	$(MAKE) --no-print-directory demo-network
	$(MAKE) --no-print-directory demo-snowflake

test-short:
	$(GO) test -race -short -count=1 ./...

fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -timeout 0 $$pkg || exit 1; \
	  done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./test/

# Whole chains against the reference relay and raw TCP: throughput, setup
# latency, CPU per GiB, memory per connection; then 10,000 connections held.
# About 5 minutes; docs/performance.md explains the table. PTBENCH_FLAGS=-h lists the knobs.
ptbench: build
	$(GO) build -o $(BIN)/ ./test/ptbench
	$(BIN)/ptbench -bin $(BIN) $(PTBENCH_FLAGS)

clean:
	rm -rf $(BIN)
