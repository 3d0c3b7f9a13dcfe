# Strata — developer and CI entry points. `make help` lists the targets.
#
# Every client tool the tests drive is installed at a pinned version into
# bin/tools (see `make tools`), and bin/tools is put first on PATH for the
# tests, so a run never depends on whatever happens to be installed globally.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO        ?= go
BIN_DIR   := $(CURDIR)/bin
TOOLS_DIR := $(BIN_DIR)/tools
STRATA    := $(BIN_DIR)/strata

# Pinned tool versions. Bump deliberately; `make tools` reinstalls on change.
CRANE_VERSION       := v0.22.1
ORAS_VERSION        := v1.3.6
REGCTL_VERSION      := v0.11.7
PROTOC_GEN_GO       := v1.36.12
PROTOC_GEN_GO_GRPC  := v1.5.1

CRANE_PKG           := github.com/google/go-containerregistry/cmd/crane
ORAS_PKG            := oras.land/oras/cmd/oras
REGCTL_PKG          := github.com/regclient/regclient/cmd/regctl
PROTOC_GEN_GO_PKG   := google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GRPC_PKG := google.golang.org/grpc/cmd/protoc-gen-go-grpc

# Tools built with `go install pkg@version` into bin/tools: name|package|version.
GO_TOOLS := \
	crane|$(CRANE_PKG)|$(CRANE_VERSION) \
	oras|$(ORAS_PKG)|$(ORAS_VERSION) \
	regctl|$(REGCTL_PKG)|$(REGCTL_VERSION) \
	protoc-gen-go|$(PROTOC_GEN_GO_PKG)|$(PROTOC_GEN_GO) \
	protoc-gen-go-grpc|$(PROTOC_GEN_GRPC_PKG)|$(PROTOC_GEN_GO_GRPC)

# Debian packages for tools that are not Go modules: package:command.
APT_TOOLS := skopeo:skopeo protobuf-compiler:protoc

TEST_TIMEOUT ?= 20m
RACE_TIMEOUT ?= 40m
# Extra flags for go test, e.g. GOTEST_FLAGS=-count=1 to bypass the test cache.
GOTEST_FLAGS ?=
FUZZTIME     ?= 30s
BENCH        ?= .
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS      ?= -s -w -X main.version=$(VERSION)

# The OCI conformance runner lives in the shared tree beside the checkout.
CONFORMANCE_SCRIPT ?= $(CURDIR)/../shared/tools/oci-conformance.sh
export CONFORMANCE_SCRIPT

# Tools first on PATH for anything that runs tests.
TEST_ENV := PATH="$(TOOLS_DIR):$$PATH"

PROTO_FILES = $(shell find . -name '*.proto' -not -path './.git/*' -not -path './bin/*' | sort)

.PHONY: help
help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/strata (static, CGO_ENABLED=0)
	@mkdir -p $(BIN_DIR)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(STRATA) ./cmd/strata

# The same binary with the chaos suite's code failpoints compiled in
# (chaos/failpoint; armed through STRATA_FAILPOINTS or an HTTP endpoint).
STRATA_FP := $(BIN_DIR)/strata-failpoints

.PHONY: build-failpoints
build-failpoints: ## Build bin/strata-failpoints: bin/strata with code failpoints (-tags failpoints, docs/CHAOS.md)
	@mkdir -p $(BIN_DIR)
	CGO_ENABLED=0 $(GO) build -trimpath -tags failpoints -ldflags '$(LDFLAGS)' -o $(STRATA_FP) ./cmd/strata

.PHONY: run
run: build ## Build, then run a single-process dev registry (bin/strata serve --dev)
	$(STRATA) serve --dev

.PHONY: test
test: tools ## Tools, go vet, go test (unit + e2e with real clients), the quick chaos suite, then conformance on a dev cluster and on --dev
	$(GO) vet ./...
	@mkdir -p $(BIN_DIR)
	$(TEST_ENV) $(GO) test -timeout $(TEST_TIMEOUT) $(GOTEST_FLAGS) ./... 2>&1 | tee $(BIN_DIR)/go-test.log \
		|| { $(CURDIR)/deploy/scripts/test-summary.sh $(BIN_DIR)/go-test.log; exit 1; }
	@$(MAKE) chaos-quick
	@$(MAKE) conformance-cluster
	@$(MAKE) conformance

.PHONY: test-failpoints
test-failpoints: ## Failpoint tests built with -tags failpoints (about 2 min): chaos/failpoint, crashes at each failpoint, the failpoints scenario
	$(TEST_ENV) $(GO) test -tags failpoints -timeout $(TEST_TIMEOUT) $(GOTEST_FLAGS) ./chaos/failpoint/
	$(TEST_ENV) $(GO) test -tags failpoints -timeout $(TEST_TIMEOUT) $(GOTEST_FLAGS) -run 'Failpoint|SnapshotInstall' ./chaos/ ./cluster/

.PHONY: test-race
test-race: tools ## go test -race over every package
	$(TEST_ENV) $(GO) test -race -timeout $(RACE_TIMEOUT) $(GOTEST_FLAGS) ./...

.PHONY: conformance
conformance: build ## OCI conformance (PROFILE=all) against a fresh dev server, or CONFORMANCE_URL
	$(TEST_ENV) STRATA_BIN=$(STRATA) $(CURDIR)/deploy/scripts/conformance.sh

.PHONY: conformance-cluster
conformance-cluster: build ## OCI conformance (PROFILE=all) through a frontend of a dev cluster: 3 meta, 6 storage (4+2), 2 api
	$(TEST_ENV) STRATA_BIN=$(STRATA) $(CURDIR)/deploy/scripts/conformance-cluster.sh

# Chaos suite (chaos/, docs/CHAOS.md): `strata chaos run` against an 11-node dev
# cluster on 127.0.0.1 (3 meta, 6 storage, 2 api), one scenario after another.
# Reports (JSON and .txt) go to CHAOS_DIR, with the histories and every node's
# log of a failed scenario; CHAOS_SEED replays a run (0: a new seed each run);
# CHAOS_FLAGS adds flags (e.g. --tolerate-5xx). Every scenario runs even after
# one fails; the target fails if any did.
CHAOS_DIR   ?= $(BIN_DIR)/chaos-results
CHAOS_SEED  ?= 0
CHAOS_FLAGS ?=
CHAOS_QUICK ?= leader-kill:60s mixed:60s
CHAOS_FAILPOINTS ?= failpoints:90s
CHAOS_COMPOSE    ?= kill-and-cut:75s
CHAOS_SOAK  ?= leader-kill:2m storage-kill:2m pause:2m partition:2m corrupt:2m rolling-restart:2m gc-under-faults:2m disk-full:2m mixed:12m

# chaos_run(scenario:duration ..., binary, flags): the binary runs the harness (and the nodes)
define chaos_run
	@mkdir -p $(CHAOS_DIR); failed=""; start=$$(date +%s); \
	for sd in $(1); do s=$${sd%%:*}; d=$${sd#*:}; \
	  echo "== $(notdir $(2)) chaos run --scenario $$s --duration $$d --seed $(CHAOS_SEED) $(3) $(CHAOS_FLAGS)"; \
	  $(2) chaos run --scenario $$s --duration $$d --seed $(CHAOS_SEED) --report $(CHAOS_DIR)/$$s.json --quiet $(3) $(CHAOS_FLAGS) \
	    || failed="$$failed $$s"; \
	done; \
	echo "chaos: $$(( $$(date +%s) - start ))s; reports in $(CHAOS_DIR)"; \
	if [ -n "$$failed" ]; then echo "chaos: FAILED:$$failed"; exit 1; fi; echo "chaos: every scenario passed"
endef

.PHONY: chaos-quick
chaos-quick: build ## Chaos suite, quick (about 3 min): leader-kill and mixed, 60s of faults each
	$(call chaos_run,$(CHAOS_QUICK),$(STRATA))

.PHONY: chaos-failpoints
chaos-failpoints: build-failpoints ## Chaos scenario failpoints with bin/strata-failpoints (about 2 min): crashes between shards and commit, in repair, in snapshot installs
	$(call chaos_run,$(CHAOS_FAILPOINTS),$(STRATA_FP))

.PHONY: chaos-compose
chaos-compose: build image ## Chaos suite on containers (about 3 min): kill-and-cut with --backend compose (deploy/compose.yaml; docker kill/stop/pause, network disconnect)
	$(call chaos_run,$(CHAOS_COMPOSE),$(STRATA),--backend compose --image strata:$(IMAGE_TAG))

.PHONY: chaos
chaos: build ## Chaos soak (about 35 min, hundreds of faults): every scenario for 2 min (disk-full needs root), then mixed for 12 min
	$(call chaos_run,$(CHAOS_SOAK),$(STRATA))

# Images: static binaries built here (nothing is pulled; both images are FROM scratch).
IMAGE_BUILD_DIR := $(CURDIR)/deploy/.build
IMAGE_TAG       := $(subst +,_,$(VERSION))
DOCKER          ?= docker

.PHONY: image
image: ## Build images strata:dev and strata-lb:dev (FROM scratch, static binaries), also tagged with the git version
	rm -rf $(IMAGE_BUILD_DIR) && mkdir -p $(IMAGE_BUILD_DIR)/data $(IMAGE_BUILD_DIR)/tmp
	chmod 0755 $(IMAGE_BUILD_DIR)/data && chmod 1777 $(IMAGE_BUILD_DIR)/tmp
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(IMAGE_BUILD_DIR)/strata ./cmd/strata
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(IMAGE_BUILD_DIR)/strata-lb ./deploy/lb
	$(DOCKER) build -q -f deploy/Dockerfile -t strata:dev -t strata:$(IMAGE_TAG) $(IMAGE_BUILD_DIR)
	$(DOCKER) build -q -f deploy/lb/Dockerfile -t strata-lb:dev -t strata-lb:$(IMAGE_TAG) $(IMAGE_BUILD_DIR)
	$(DOCKER) image prune -f --filter label=io.strata-registry.image >/dev/null

.PHONY: compose-test
compose-test: image ## deploy/compose.yaml end to end: push/pull through the lb, stop 1 meta + 2 storage, push/pull again
	STRATA_COMPOSE_TEST=1 STRATA_COMPOSE_NO_BUILD=1 $(GO) test -count=1 -v -timeout 15m -run '^TestCompose$$' ./deploy/

.PHONY: fuzz
fuzz: ## Run every Fuzz* target in the repo for FUZZTIME each (default 30s)
	$(TEST_ENV) FUZZTIME=$(FUZZTIME) GO=$(GO) $(CURDIR)/deploy/scripts/fuzz.sh

.PHONY: bench
bench: ## Run benchmarks (go test -run XXX -bench . -benchmem ./...; BENCH=regexp narrows)
	$(TEST_ENV) $(GO) test -run XXX -bench '$(BENCH)' -benchmem ./...

# strata bench against a running registry: BENCH_URL (default: the `make run`
# server), BENCH_ARGS for more flags (e.g. --scenario pull-herd --duration 30s).
BENCH_URL  ?= http://127.0.0.1:5000
BENCH_ARGS ?= --scenario all

.PHONY: bench-load
bench-load: build ## Load-test a running registry with strata bench (BENCH_URL, BENCH_ARGS)
	$(STRATA) bench --url $(BENCH_URL) --summary $(BENCH_ARGS)

.PHONY: bench-compare
bench-compare: build ## Strata (--dev and a 4+2 dev cluster) next to CNCF Distribution v3.1.2: a table of ratios (~15 min)
	STRATA_BIN=$(STRATA) $(CURDIR)/deploy/scripts/bench-compare.sh

.PHONY: bench-encryption
bench-encryption: build ## What encryption at rest costs end to end: serve --dev with and without its keyring, same load (~5 min)
	STRATA_BIN=$(STRATA) $(CURDIR)/deploy/scripts/bench-encryption.sh

.PHONY: bench-memory
bench-memory: build ## A frontend's peak RSS under 256 concurrent pulls (distinct and herd), default and large --read-memory (CPU heavy)
	STRATA_BIN=$(STRATA) $(CURDIR)/deploy/scripts/bench-memory.sh

.PHONY: generate
generate: tools ## Regenerate protobuf/gRPC code from every *.proto (paths=source_relative)
	$(if $(PROTO_FILES),protoc -I . \
		--plugin=protoc-gen-go=$(TOOLS_DIR)/protoc-gen-go \
		--plugin=protoc-gen-go-grpc=$(TOOLS_DIR)/protoc-gen-go-grpc \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		$(PROTO_FILES),@echo "no .proto files")

.PHONY: lint
lint: ## gofmt -l must be empty, then go vet
	@out="$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*' -not -path './bin/*'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: tools
tools: $(foreach t,$(GO_TOOLS),$(TOOLS_DIR)/$(word 1,$(subst |, ,$(t)))) apt-tools ## Install pinned test/codegen tools into bin/tools (+ skopeo, protoc via apt)

# tool_rules(name, package, version): bin/tools/NAME is rebuilt when missing or
# when its version stamp bin/tools/.NAME@VERSION is new (the version changed).
define tool_rules
$(TOOLS_DIR)/$(1): $(TOOLS_DIR)/.$(1)@$(3)
	@echo "installing $(1)@$(3)"
	GOBIN=$(TOOLS_DIR) CGO_ENABLED=0 $(GO) install $(2)@$(3)
	@touch $$@
$(TOOLS_DIR)/.$(1)@$(3):
	@mkdir -p $(TOOLS_DIR)
	@rm -f $(TOOLS_DIR)/.$(1)@*
	@touch $$@
endef
$(foreach t,$(GO_TOOLS),$(eval $(call tool_rules,$(word 1,$(subst |, ,$(t))),$(word 2,$(subst |, ,$(t))),$(word 3,$(subst |, ,$(t))))))

.PHONY: apt-tools
apt-tools: ## Install skopeo and protoc with apt-get when missing (root only)
	@missing=""; \
	for pc in $(APT_TOOLS); do command -v "$${pc#*:}" >/dev/null 2>&1 || missing="$$missing $${pc%%:*}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "warning: missing$$missing; install them (not root, not installing)" >&2; exit 0; fi; \
	echo "apt-get install$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null

.PHONY: clean
clean: ## Remove bin/ (binary and tools) and conformance-results/ (keeps ./strata-data)
	rm -rf $(BIN_DIR) $(CURDIR)/conformance-results
