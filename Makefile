# upsync-wasm — every entry point a user or CI needs.
# `make demo` and `make test` install what they need on a fresh Debian machine.

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
# What cargo builds, and the deployable module: the same after `wasm-opt -Oz`.
CARGO_WASM := target/$(WASM_TARGET)/release/upsync_wasm.wasm
WASM := target/upsync_wasm.wasm
# Features rustc enables for wasm32-wasip1 that wasm-opt must accept.
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := etcd-server wrk binaryen

.PHONY: all bench build deps apt-deps rust-deps wasm-bindgen-cli venv demo test test-unit test-wasm test-emulator test-module test-e2e test-pick lint clean

all: build

## ---- installation -------------------------------------------------------
deps: apt-deps rust-deps venv

# Installs Debian packages only when a command is missing (we run as root).
apt-deps:
	@if ! command -v etcd >/dev/null || ! command -v wrk >/dev/null || ! command -v wasm-opt >/dev/null; then \
	  echo "installing $(APT_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

rust-deps:
	@for t in $(WASM_TARGET) wasm32-unknown-unknown; do \
	  rustup target list --installed | grep -qx $$t || rustup target add $$t; \
	done

# wasm-bindgen-test needs the CLI at exactly the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN_VERSION = $(shell awk '/^name = "wasm-bindgen"$$/ {getline; gsub(/"/, "", $$3); print $$3}' Cargo.lock)
wasm-bindgen-cli:
	@if [ "$$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $$2}')" != "$(WASM_BINDGEN_VERSION)" ]; then \
	  echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION)"; \
	  $(CARGO) install --quiet wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); \
	fi

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

## ---- build --------------------------------------------------------------
build: rust-deps apt-deps
	$(CARGO) build --release --target $(WASM_TARGET) --lib
	@$(MAKE) --no-print-directory $(WASM)
	@ls -l $(CARGO_WASM) $(WASM) | awk '{print "built " $$9 " (" $$5 " bytes)"}'

# Binaryen's size optimiser (Debian `binaryen`): about a fifth smaller.
$(WASM): $(CARGO_WASM)
	wasm-opt $(WASM_OPT_FLAGS) $< -o $@

## ---- demo ---------------------------------------------------------------
demo: deps build
	$(PY) scripts/demo.py --wasm $(WASM)

## ---- tests --------------------------------------------------------------
test: deps lint test-unit test-wasm test-emulator test-module test-e2e test-pick test-oci test-chaos test-zk test-fuzz-replay

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) --lib -- -D warnings
	@! grep -rn --include='*.rs' -E 'use proxy_wasm|proxy_wasm::' src/sansio \
	  || { echo "src/sansio must not touch proxy-wasm (sans-IO core)"; exit 1; }
	python3 scripts/check_layers.py
	$(CARGO) clippy -p upsync-zk-bridge --all-targets -- -D warnings

test-unit:
	$(CARGO) test

# The core's tests, compiled to 32-bit wasm and run in Node by wasm-bindgen-test.
test-wasm: rust-deps wasm-bindgen-cli
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test --target wasm32-unknown-unknown --no-default-features --lib

# The Consul emulator's own tests, against Consul's documented behaviour.
test-emulator: venv
	$(PY) -m pytest -q tests/consul_emulator

# The built module's imports: only what Envoy and ngx_wasm_module both provide.
test-module: venv build
	UPSYNC_WASM=$(WASM) $(PY) -m pytest -q tests/wasm

test-e2e: deps build
	$(PY) -m pytest -q tests/e2e --wasm $(WASM)

# Pick mode on a real Envoy: override_host and original_dst routing.
test-pick: deps build
	$(PY) -m pytest -q tests/pick --wasm $(WASM)

# Chaos (about a minute): wrk through a real Envoy while members churn in a
# real etcd, etcd is SIGKILLed twice, and a fault proxy garbles the
# registry path; 0 non-2xx, members back to etcd's, no Wasm VM restart.
.PHONY: test-chaos
test-chaos: deps build
	$(PY) -m pytest -q tests/chaos --wasm $(WASM)

## ---- benchmarks ---------------------------------------------------------
# Ratios against baselines measured in the same run; never part of `make test`.
# The last three: scale (issue 10), many upstreams, one big service, a soak.
BENCH_APT := nginx
bench: deps build
	@command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_APT) >/dev/null; }
	$(CARGO) bench --bench snapshot
	$(CARGO) bench --bench change_cost
	$(PY) benches/pick_overhead.py --wasm $(WASM)
	$(PY) benches/propagation.py --wasm $(WASM)
	$(PY) benches/scale.py --wasm $(WASM)
	$(PY) benches/big_service.py --wasm $(WASM)
	$(PY) benches/soak.py --wasm $(WASM)
	$(PY) benches/etcd_failover.py --wasm $(WASM)
	$(PY) benches/parse_v8.py --wasm $(WASM)
	@$(MAKE) --no-print-directory bench-zk

clean:
	$(CARGO) clean
	rm -rf $(VENV)

## ---- ZooKeeper through upsync-zk-bridge (zk-bridge/, docs/zk-bridge.md) ----
# The bridge is a native binary beside the plugin; the wasm never links it.
ZK_BRIDGE := target/zk-bridge/upsync-zk-bridge
ZK_BRIDGE_DEBUG := target/debug/upsync-zk-bridge
.PHONY: zk-deps build-zk-bridge test-zk demo-zk bench-zk

# Debian's ZooKeeper 3.8 (the tests start private servers; no system service).
zk-deps:
	@if [ ! -x /usr/share/zookeeper/bin/zkServer.sh ]; then \
	  echo "installing zookeeper with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	fi

# Optimised build (demo, bench, deployment).
build-zk-bridge:
	$(CARGO) build -p upsync-zk-bridge --profile zk-bridge
	@ls -l $(ZK_BRIDGE) | awk '{print "built " $$9 " (" $$5 " bytes)"}'

# Unit tests, then ZooKeeper -> bridge -> plugin -> Envoy end to end. The
# debug build shares its compiled dependencies with `cargo test`.
test-zk: deps zk-deps build
	$(CARGO) test -p upsync-zk-bridge
	$(CARGO) build -p upsync-zk-bridge
	UPSYNC_ZK_BRIDGE=$(ZK_BRIDGE_DEBUG) $(PY) -m pytest -q tests/zk --wasm $(WASM)

demo-zk: deps zk-deps build build-zk-bridge
	$(PY) scripts/demo_zk.py --wasm $(WASM)

bench-zk: deps zk-deps build build-zk-bridge
	$(PY) benches/zk_propagation.py --wasm $(WASM)

## ---- fuzzing (fuzz/, README "Fuzzing") ----------------------------------
# `make fuzz` needs nightly and cargo-fuzz (installed when missing) and runs
# every target for FUZZ_SECONDS, then minimises its corpus in place.
# `make test-fuzz-replay` (part of `make test`) replays every corpus file on
# stable, timing each. `make fuzz-slow` times the crafted slow inputs.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))
FUZZ_SANITIZER ?= none
FUZZ_MAX_LEN ?= 32768
FUZZ_DICT ?= $(CURDIR)/fuzz/dicts/json.dict
FUZZ_TOOL = cd fuzz && $(CARGO) run --quiet --release --no-default-features --features tools --bin

.PHONY: fuzz fuzz-deps fuzz-slow test-fuzz-replay

fuzz-deps:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz

fuzz: fuzz-deps
	$(FUZZ_TOOL) seeds
	@mkdir -p fuzz/artifacts; failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: fuzz/artifacts/$$t.log)"; \
	  (cd fuzz && $(CARGO) +nightly fuzz run -s $(FUZZ_SANITIZER) $$t -- -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=$(FUZZ_MAX_LEN) -dict=$(FUZZ_DICT) -timeout=10 -report_slow_units=1 -print_final_stats=1) \
	    > fuzz/artifacts/$$t.log 2>&1 || { failed="$$failed $$t"; tail -40 fuzz/artifacts/$$t.log; }; \
	  (cd fuzz && $(CARGO) +nightly fuzz cmin -s $(FUZZ_SANITIZER) $$t -- -max_len=$(FUZZ_MAX_LEN) -use_counters=0 -set_cover_merge=1) \
	    > fuzz/artifacts/$$t.cmin.log 2>&1 || failed="$$failed $$t(cmin)"; \
	done; \
	for t in $(FUZZ_TARGETS); do \
	  printf '%-15s %12s executions, corpus %s files\n' $$t \
	    "$$(sed -n 's/^stat::number_of_executed_units: *//p' fuzz/artifacts/$$t.log)" "$$(ls fuzz/corpus/$$t | wc -l)"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failures in$$failed (inputs in fuzz/artifacts/)"; exit 1; fi
	$(FUZZ_TOOL) replay

test-fuzz-replay:
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --check
	cd fuzz && $(CARGO) clippy --quiet --release --no-default-features --features tools --all-targets -- -D warnings
	$(FUZZ_TOOL) replay

# The slow inputs (gzip) under fuzz/slow/<target>/, through the replay.
fuzz-slow:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for f in fuzz/slow/*/*.gz; do mkdir -p "$$tmp/$$(basename $$(dirname $$f))"; \
	  gunzip -c "$$f" > "$$tmp/$$(basename $$(dirname $$f))/$$(basename $$f .gz)"; done; \
	$(FUZZ_TOOL) replay -- --dir "$$tmp" --top 5

## ---- OCI image (make oci, make publish, make test-oci) ------------------
include oci/oci.mk

## ---- soak, natively (issue 10) ---------------------------------------------
# benches/soak_heap.rs: benches/soak.py's updates fed to the poller natively
# (its live heap bytes, per-call transients), then built for wasm32-wasip1
# and run under Node's WASI (the module's linear memory, its own allocator).
.PHONY: bench-heap
bench-heap:
	$(CARGO) bench --bench soak_heap
	$(CARGO) bench --bench soak_heap -- --drift
	$(CARGO) bench --bench soak_heap --no-run --target $(WASM_TARGET) --no-default-features
	node --no-warnings benches/soak_heap_wasi.mjs \
	  $$(ls -t target/$(WASM_TARGET)/release/deps/soak_heap-*.wasm | head -1)
