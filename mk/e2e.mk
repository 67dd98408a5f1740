# End-to-end tests on a real local control plane (tests/e2e/): the Go program in tests/e2e/cluster/ (embedded etcd,
# kube-apiserver, kube-scheduler) and the pytest suite with the kubelet stand-in. Included last by the Makefile.
E2E_TEST_TARGETS += test-e2e
LINT_TARGETS += lint-e2e

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
LOCALCLUSTER_DIR := tests/e2e/cluster
LOCALCLUSTER := $(ROOT)/$(LOCALCLUSTER_DIR)/bin/localcluster
# One set of flags everywhere: each combination is its own build-cache key. grpcnotrace is what the upstream
# release builds use; the -X flags make /version report the release instead of v0.0.0-master.
# E2E_PYTEST_TIMEOUT is per test (pytest-timeout), cluster start-up included for the first one.
LOCALCLUSTER_K8S_VERSION := v1.34.4
LOCALCLUSTER_GOFLAGS := -tags grpcnotrace -buildvcs=false -ldflags "-X k8s.io/component-base/version.gitVersion=$(LOCALCLUSTER_K8S_VERSION) \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
E2E_PYTEST_TIMEOUT ?= 300

.PHONY: localcluster test-e2e lint-e2e

# go build decides what is stale (a no-op build takes seconds), so this target always asks it.
localcluster:
	@$(GO) version >/dev/null 2>&1 || { echo "make localcluster: no Go toolchain found (need Go >= 1.24 on PATH or in /usr/local/go)" >&2; exit 1; }
	cd $(LOCALCLUSTER_DIR) && $(GO) build $(LOCALCLUSTER_GOFLAGS) -o bin/localcluster .

test-e2e: setup localcluster
	LOCALCLUSTER_BIN=$(LOCALCLUSTER) $(PYTEST) -q -p no:cacheprovider --timeout=$(E2E_PYTEST_TIMEOUT) tests/e2e

lint-e2e: localcluster
	cd $(LOCALCLUSTER_DIR) && $(GO) vet $(LOCALCLUSTER_GOFLAGS) . && test -z "$$(gofmt -l .)"
