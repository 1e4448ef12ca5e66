# upsync-wasm — every entry point a user or CI needs.
# `make demo` and `make test` install what they need on a fresh Debian machine.

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/upsync_wasm.wasm
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := etcd-server wrk

.PHONY: all build deps apt-deps rust-deps venv demo test test-unit test-wasm test-e2e lint fmt clean

all: build

## ---- installation -------------------------------------------------------
deps: apt-deps rust-deps venv

# Installs Debian packages only when a command is missing (we run as root).
apt-deps:
	@if ! command -v etcd >/dev/null || ! command -v wrk >/dev/null; then \
	  echo "installing $(APT_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

rust-deps:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

## ---- build --------------------------------------------------------------
build: rust-deps
	$(CARGO) build --release --target $(WASM_TARGET) --lib
	@ls -l $(WASM) | awk '{print "built " $$9 " (" $$5 " bytes)"}'

## ---- demo ---------------------------------------------------------------
demo: deps build
	$(PY) scripts/demo.py --wasm $(WASM)

## ---- tests --------------------------------------------------------------
test: deps lint test-unit test-e2e

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) --lib -- -D warnings

test-unit:
	$(CARGO) test

test-e2e: deps build
	$(PY) -m pytest -q tests/e2e --wasm $(WASM)

clean:
	$(CARGO) clean
	rm -rf $(VENV)
