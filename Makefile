# tokenbroker. `make demo` runs the whole story; `make test` is what CI runs.
GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

# Pinned tool versions: the generated code records the plugin versions, so
# proto-check only passes with these.
BUF_VERSION                ?= v1.47.2
PROTOC_GEN_GO_VERSION      ?= v1.36.10
PROTOC_GEN_GO_GRPC_VERSION ?= v1.5.1
STATICCHECK_VERSION        ?= v0.8.2

.PHONY: all build test vet fmt-check lint proto proto-check tools demo bench bench-scale bench-smoke clean fuzz

all: build

build:
	$(GO) build ./...

## test: vet, gofmt, staticcheck, proto-check, the race-enabled test suite
## and a smoke run of the benchmark.
test: vet fmt-check lint proto-check
	$(GO) test -race -count=1 -parallel 8 ./...
	$(MAKE) --no-print-directory bench-smoke

vet:
	$(GO) vet ./...

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

## lint: staticcheck at the pinned version.
lint:
	@command -v staticcheck >/dev/null 2>&1 && staticcheck -version | grep -q "($(STATICCHECK_VERSION:v%=%))" || \
		$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	staticcheck ./...

## tools: install buf and the protoc plugins at the pinned versions.
tools:
	@command -v buf >/dev/null 2>&1 && buf --version | grep -qx "$(BUF_VERSION:v%=%)" || \
		$(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@command -v protoc-gen-go >/dev/null 2>&1 && protoc-gen-go --version | grep -q "$(PROTOC_GEN_GO_VERSION)" || \
		$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@command -v protoc-gen-go-grpc >/dev/null 2>&1 && protoc-gen-go-grpc --version | grep -q "$(PROTOC_GEN_GO_GRPC_VERSION:v%=%)" || \
		$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

## proto: regenerate the Go code from proto/.
proto: tools
	buf lint
	buf generate

## proto-check: lint, and fail when regenerating would change the committed code.
proto-check: tools
	buf lint
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	buf generate -o "$$tmp" && \
	for f in $$(cd "$$tmp" && find . -name '*.go'); do \
		cmp -s "$$tmp/$$f" "$$f" || { echo "proto-check: $$f is stale; run make proto"; exit 1; }; \
	done; \
	for f in $$(find proto -name '*.pb.go'); do \
		[ -f "$$tmp/$$f" ] || { echo "proto-check: $$f has no .proto; run make proto"; exit 1; }; \
	done; echo "proto-check: generated code is current"

## demo: the whole story on one machine: test IdP, broker, 50 workers for 20 s.
## Flags go in DEMO_FLAGS, e.g. make demo DEMO_FLAGS=--naive, or
## DEMO_FLAGS="--replicas 3" (starts a private redis-server), or --help.
demo:
	$(GO) run ./cmd/client-demo $(DEMO_FLAGS)

# Every fuzz target, as package:Name. Their seed corpora (testdata/fuzz) also
# run as ordinary tests in `make test`.
FUZZ_TARGETS := \
	internal/broker:FuzzValidateID internal/broker:FuzzValidateCredential \
	internal/upstream:FuzzExchangeResponse \
	internal/seal:FuzzOpen internal/seal:FuzzParseKeyring \
	internal/auth:FuzzParseClients \
	cmd/broker:FuzzParseConfig internal/server:FuzzCredentialsFile
FUZZTIME ?= 5s

## fuzz: run each fuzz target for FUZZTIME (CI runs them briefly).
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		out=$$($(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg 2>&1) || { echo "$$out"; exit 1; }; \
		echo "$$out" | tail -1; \
	done

## bench: measure the broker on this machine (about four minutes; needs
## redis-server), with replicas built as cmd/broker builds them in Redis
## mode (sealed records, bearer keys, audit, metrics): cached GetToken
## against the gRPC floor, the SDK's cached path, a refresh storm, 100,000
## credentials. Prints a table with each target MET or NOT MET, writes
## bench/results/latest.json. Flags go in BENCH_FLAGS (e.g. --strict,
## --steps storm, or --cpuprofile cpu.prof [--profile-floor] to profile
## the hot path instead).
bench:
	$(GO) run ./cmd/bench $(BENCH_FLAGS)

## bench-scale: 1,000,000 credentials in a private redis-server (loaded
## with redisstore's Import, not refreshed one by one), the table of how
## per-call CPU, memory and Redis commands grow with credentials and
## replicas, and refresh-ahead of tokens expiring together paced at the
## IdP's rate (under ten minutes, about 2 GB of memory). Writes
## bench/results/scale.json.
bench-scale:
	$(GO) run ./cmd/bench --scale $(BENCH_FLAGS)

## bench-smoke: every step of make bench with tiny sizes (seconds), so it
## cannot rot; part of make test.
bench-smoke:
	$(GO) run ./cmd/bench --smoke --json bench/results/smoke.json

.PHONY: image deploy-check

## deploy-check: the checks of deploy/ (kustomize render and strict decode,
## alert rules, dashboard, compose file, Dockerfile), in deploy/'s own Go
## module; see deploy/README.md. Part of make test.
deploy-check:
	@out="$$(cd deploy && gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt needed in deploy/ on:"; echo "$$out"; exit 1; fi
	cd deploy && $(GO) vet ./...
	cd deploy && $(GO) test -count=1 ./...

test: deploy-check

## image: build deploy/Dockerfile's broker and client-demo images with
## docker (when its daemon answers) or podman (daemonless), or
## CONTAINER_ENGINE=..., tagged $(IMAGE_REPO)/NAME:$(VERSION).
VERSION          ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION         ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_REPO       ?= tokenbroker
CONTAINER_ENGINE ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; fi)

image:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "make image: no container engine: no docker daemon answers and podman is not installed (Debian: apt-get install podman); nothing built"; \
		exit 1; \
	fi
	@echo "make image: building with $(CONTAINER_ENGINE)"
	@for target in broker client-demo; do \
		$(CONTAINER_ENGINE) build -f deploy/Dockerfile --target $$target \
			--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) \
			-t $(IMAGE_REPO)/$$target:$(VERSION) . || exit 1; \
	done
