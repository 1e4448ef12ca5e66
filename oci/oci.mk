# upsync-wasm: the plugin as an OCI image (Wasm image spec, "compat" variant).
# Included by the main Makefile (`include oci/oci.mk`); uses its WASM, PY and
# its targets `build` and `venv`. See docs/deploy.md.
#
#   make oci                 image layout in target/oci/layout (tag = crate version)
#                            and target/oci/upsync-wasm-<version>.tar; refuses a
#                            dirty git tree unless ALLOW_DIRTY=1
#   make publish REGISTRY=host:port/name:tag
#                            push the image `make oci` built, with skopeo
#   make test-oci            builder tests, registry round trip, Envoy remote load

WASM ?= target/upsync_wasm.wasm
PY ?= .venv/bin/python

OCI_NAME := upsync-wasm
# `version` of Cargo.toml's [package] table: the image tag.
OCI_VERSION := $(shell awk -F'"' '/^\[/ {pkg = ($$0 == "[package]")} pkg && /^version[ \t]*=/ {print $$2; exit}' Cargo.toml)
OCI_TAG := $(OCI_VERSION)
OCI_DIR := target/oci
OCI_LAYOUT := $(OCI_DIR)/layout
OCI_TAR := $(OCI_DIR)/$(OCI_NAME)-$(OCI_VERSION).tar
# The builder is standard-library Python 3: no venv needed.
OCI_PYTHON ?= python3
# `make publish` talks plain HTTP / unverified TLS to REGISTRY unless OCI_TLS_VERIFY=true.
OCI_TLS_VERIFY ?= false
OCI_APT_PACKAGES := skopeo docker-registry

.PHONY: oci oci-image oci-check-clean oci-deps publish publish-check-args test-oci

# Debian's skopeo (push/pull) and docker-registry (the registry the tests run),
# installed only when missing. On a systemd machine the docker-registry package
# starts a system-wide registry on :5000; the tests start their own on
# 127.0.0.1, so that service is stopped and disabled right after installing.
oci-deps:
	@if ! command -v skopeo >/dev/null || [ ! -x /usr/bin/docker-registry ]; then \
	  echo "installing $(OCI_APT_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(OCI_APT_PACKAGES) >/dev/null; \
	  if [ -d /run/systemd/system ]; then systemctl disable --now docker-registry.service >/dev/null 2>&1 || true; fi; \
	fi

oci-check-clean:
	@if [ "$(ALLOW_DIRTY)" != 1 ] && [ -n "$$(git status --porcelain)" ]; then \
	  echo "make oci: the git tree is dirty; commit first, or set ALLOW_DIRTY=1 to build anyway:" >&2; \
	  git status --short | head -20 >&2; \
	  exit 1; \
	fi

# The image, without the clean-tree check (what `make oci` and `test-oci` use).
oci-image: build
	@test -n "$(OCI_VERSION)" || { echo "no [package] version in Cargo.toml" >&2; exit 1; }
	$(OCI_PYTHON) oci/build_oci.py --wasm $(WASM) --version $(OCI_VERSION) --tag $(OCI_TAG) \
	  --name $(OCI_NAME) --out $(OCI_LAYOUT) --tar $(OCI_TAR) --summary $(OCI_DIR)/image.json

oci: oci-check-clean oci-image
	@echo "image $(OCI_NAME):$(OCI_TAG) $$(awk -F'"' '/manifest_digest/ {print $$4}' $(OCI_DIR)/image.json)"
	@echo "  layout  $(OCI_LAYOUT)  (skopeo: oci:$(OCI_LAYOUT):$(OCI_TAG))"
	@echo "  archive $(OCI_TAR)  (skopeo: oci-archive:$(OCI_TAR):$(OCI_TAG))"

publish-check-args:
	@test -n "$(REGISTRY)" || { echo "usage: make publish REGISTRY=host:port/name:tag" >&2; exit 2; }

# Pushes the image `make oci` built (run that first; this does not rebuild).
publish: publish-check-args oci-deps
	@test -f $(OCI_DIR)/image.json || { echo "no image in $(OCI_DIR): run \`make oci\` first" >&2; exit 1; }
	@built=$$(awk -F'"' '/"wasm_sha256"/ {print $$4}' $(OCI_DIR)/image.json); \
	  now=$$(sha256sum $(WASM) | cut -d' ' -f1); \
	  if [ "$$built" != "$$now" ]; then \
	    echo "$(OCI_DIR) holds another module than $(WASM): run \`make oci\` again" >&2; exit 1; \
	  fi
	skopeo copy --preserve-digests --dest-tls-verify=$(OCI_TLS_VERIFY) \
	  --digestfile $(OCI_DIR)/pushed-digest \
	  oci:$(OCI_LAYOUT):$(OCI_TAG) docker://$(REGISTRY)
	@echo "pushed $(REGISTRY) $$(cat $(OCI_DIR)/pushed-digest)"

test-oci: venv oci-deps oci-image
	$(PY) -m pytest -q tests/oci --wasm $(WASM)
