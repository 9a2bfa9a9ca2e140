# mxlb — see README.md. `make test` is what CI runs (.ci/run).
GO       ?= go
GOBIN    := $(shell $(GO) env GOPATH)/bin
BIN      := bin/mxlb
PKGS     := ./...
FUZZTIME ?= 15s

.PHONY: all build deps lint test unit integration fuzz bench bench-agent bench-dns bench-failover bench-trace demo clean

all: build

# Static (CGO_ENABLED=0): cgo would link only libc's resolver and an unused gobgp helper;
# without it the binary runs on any Linux and maps 3.8 MB fewer file pages (README, The L4
# engine). The race-detector builds of the tests keep cgo.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/mxlb

deps:
	./scripts/deps.sh

lint: deps
	$(GO) vet $(PKGS)
	$(GOBIN)/staticcheck $(PKGS)

# Unit and integration tests with the race detector. Integration tests (integration/) need
# root and the packages from deps; without them they skip and say why.
#
# After deps, two phases, each of two steps at once (make -j2): lint with fuzz (CPU work,
# nothing timed), then unit with integration (mostly waiting on probe intervals, failover
# budgets and clusters converging). Timing-sensitive tests (memberlist heartbeats) failed
# when they shared the CPU with lint and the fuzzer as well. Each step's output is printed
# whole when it ends. `make lint unit integration fuzz` runs them one after another.
test: deps
	$(MAKE) --no-print-directory -j2 --output-sync=target lint fuzz
	$(MAKE) --no-print-directory -j2 --output-sync=target unit integration

unit: deps
	$(GO) test -race -count=1 -timeout 8m $$($(GO) list $(PKGS) | grep -v '/integration$$')

# The integration tests run as three processes at once (scripts/shards.sh, which prints each
# one's seconds). One after another under load they took 395 s: the three-node
# control-plane test 200 s, the agent and VIP tests 95 s, the rest 100 s. A fourth shard for
# the later trace, BGP and page tests saved a minute (6.9 against 7.9 minutes) but starved
# memberlist in the VIP test on 2 cores (its drain timed out waiting for mail): three. The
# rest grew to 382 s in a make test on a fresh clone (236 s alone: the browser page test
# 44 s, BGP 39 s, the farm trace 30 s) against 192 s and 219 s: the page test goes with the
# control-plane test and BGP with the agent and VIP tests. On 2 December the shards took 232,
# 271 and 412 s (make test 599 s): the farm trace test (26 s alone, the longest of the rest)
# moved to the first.
INTEGRATION_SHARDS ?= '^(TestClusterControlPlane|TestPageInBrowser|TestTraceFarm)$$' '^Test(Agent|VIP|BGP)'

integration: deps
	./scripts/shards.sh -timeout 8m ./integration $(INTEGRATION_SHARDS)

# Bounded fuzzing of every parser that reads bytes from the network.
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

# mxlb against HAProxy, same backends, same run; prints ratios.
bench: deps build
	$(GO) run ./bench/lbbench -mxlb $(BIN)

# VIP failover after a crash, keepalived (VRRP) against mxlb at two failover budgets, in
# network namespaces (root).
bench-failover: deps build
	$(GO) run ./bench/failover -mxlb $(BIN) -runs 5

# `mxlb agent` on a generated 100,000-message Postfix queue: probe latency, CPU at 10 balancers.
bench-agent: build
	$(GO) run ./bench/agentbench -mxlb $(BIN)

# Mail trace: query latency of one MTA host's store (-n messages over 7 days; the issue's
# 2M/day is -n=14000000, about 28 GB) and a farm-wide trace over 50 agents on loopback.
TRACEBENCH_ARGS ?=
bench-trace:
	$(GO) run ./bench/tracebench $(TRACEBENCH_ARGS)

# The DNS server against NSD under dnsperf (installs dnsperf and nsd when root).
bench-dns:
	./bench/dns/run.sh

demo: build
	./$(BIN) demo

clean:
	rm -rf bin
