# The one entry point for humans and CI.
#
#   make setup   install what the machine lacks (Debian packages, uv) and the workspace venv (.venv/)
#   make test    setup, then every test suite (unit, component, hamicore with sanitizers, e2e)
#   make lint    ruff and mypy (strict for shared/ and the pure-logic modules)
#   make demo    the whole stack on a local control plane
#   make bench-* benchmarks (not part of `make test`); tables go into the component READMEs
#
# Each component keeps its targets in mk/<component>.mk and appends to the variables below.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := $(PYTHON) -m uv
VENV := $(ROOT)/.venv
VPY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(shell command -v $(PYTHON))
export PYTHONDONTWRITEBYTECODE := 1

# Appended to by mk/*.mk.
DEB_PACKAGES :=
TEST_TARGETS :=
E2E_TEST_TARGETS :=
LINT_TARGETS :=
BENCH_TARGETS :=

# Components first, the end-to-end fragment last so its tests run after everything else.
include $(filter-out mk/e2e.mk,$(sort $(wildcard mk/*.mk)))
-include mk/e2e.mk

.PHONY: help deps uv setup test lint demo bench clean

help:
	@echo "make setup | test | lint | demo | clean | $(BENCH_TARGETS)"

# Debian packages are installed only when missing, so a warm machine pays nothing.
deps:
	@missing=""; \
	for p in $(sort $(DEB_PACKAGES)); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)" \
	  || $(PYTHON) -m pip install --quiet --user --break-system-packages "uv==$(UV_VERSION)"

# Idempotent: uv sync only changes what differs from uv.lock.
setup: deps uv
	@$(UV) sync --all-packages --quiet
	@for s in hami-webhook hami-scheduler-extender hami-device-plugin hami-lib-installer; do \
	  test -x "$(VENV)/bin/$$s" || { echo "make setup: console script $$s is missing" >&2; exit 1; }; \
	done

test: setup $(TEST_TARGETS) $(E2E_TEST_TARGETS)
	@echo "make test: all suites passed ($(TEST_TARGETS) $(E2E_TEST_TARGETS))"

lint: setup $(LINT_TARGETS)

bench: $(BENCH_TARGETS)

clean:
	rm -rf $(VENV) hamicore/build* tests/e2e/cluster/bin tests/e2e/.gen .pytest_cache .mypy_cache .ruff_cache
