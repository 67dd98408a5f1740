# End-to-end tests on a real local control plane (tests/e2e/): the Go program in tests/e2e/cluster/ (embedded etcd,
# kube-apiserver, kube-scheduler), the real kubelet built from the same module, and the pytest suite (real nodes:
# kubelet + containerd + runc). Included last by the Makefile.
#
#   make localcluster   tests/e2e/cluster/bin/localcluster
#   make kubelet        tests/e2e/cluster/bin/kubelet (the upstream kubelet of the same k8s.io/kubernetes version)
#   make kube-scheduler tests/e2e/cluster/bin/kube-scheduler (the same module's, static, for the scheduler image)
#   make e2e-images     the four service images (`make images`) plus the kube-scheduler image, and the list of
#                       their references the e2e suite reads ($(E2E_IMAGES_MANIFEST))
#   make kube-proxy     tests/e2e/cluster/bin/kube-proxy (upstream, same module; iptables mode in the e2e namespace)
#   make test-e2e       both, then pytest tests/e2e inside its own network + mount namespace (tests/e2e/isolated.sh)
E2E_TEST_TARGETS += test-e2e
LINT_TARGETS += lint-e2e
# What a real node needs (crun is left out on purpose: crun 1.8 refuses the hybrid cgroup layout of our machines).
# buildah, busybox-static and gcc build the small node images (pause, the GPU client) in seconds.
DEB_PACKAGES += containerd runc containernetworking-plugins buildah busybox-static iptables conntrack iproute2 \
  util-linux gcc libc6-dev

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

KUBELET := $(ROOT)/$(LOCALCLUSTER_DIR)/bin/kubelet
KUBE_PROXY := $(ROOT)/$(LOCALCLUSTER_DIR)/bin/kube-proxy
# As localcluster's, plus -s -w (no symbol table or DWARF: 104 -> 72 MB to import into every node; a link-only
# flag, so the compiled packages stay shared).
KUBE_SCHEDULER_GOFLAGS := -tags grpcnotrace -buildvcs=false -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$(LOCALCLUSTER_K8S_VERSION) \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
KUBE_SCHEDULER := $(ROOT)/$(LOCALCLUSTER_DIR)/bin/kube-scheduler
# The name the kustomization's `images:` list gives kube-scheduler (deploy/kustomize/components/common), so the
# overlays install unchanged; it is our build of that release from the same source, imported into each node
# (no registry is reachable here). Override to keep it apart from a pulled upstream image.
E2E_KUBE_SCHEDULER_IMAGE ?= registry.k8s.io/kube-scheduler:$(LOCALCLUSTER_K8S_VERSION)
# What the e2e suite's stack_images fixture reads: the image references and the buildah storage holding them.
E2E_IMAGES_MANIFEST := $(ROOT)/.work/images/e2e-images.json

.PHONY: localcluster kubelet kube-proxy kube-scheduler e2e-images test-e2e lint-e2e

# go build decides what is stale (a no-op build takes seconds), so this target always asks it.
localcluster:
	@$(GO) version >/dev/null 2>&1 || { echo "make localcluster: no Go toolchain found (need Go >= 1.24 on PATH or in /usr/local/go)" >&2; exit 1; }
	cd $(LOCALCLUSTER_DIR) && $(GO) build $(LOCALCLUSTER_GOFLAGS) -o bin/localcluster .

# The upstream kubelet from the module localcluster already builds against (go.sum lists its extra modules):
# ~100 s cold on 2 cores, seconds when Go's build cache is warm.
kubelet:
	@$(GO) version >/dev/null 2>&1 || { echo "make kubelet: no Go toolchain found (need Go >= 1.24 on PATH or in /usr/local/go)" >&2; exit 1; }
	cd $(LOCALCLUSTER_DIR) && $(GO) build $(LOCALCLUSTER_GOFLAGS) -o bin/kubelet k8s.io/kubernetes/cmd/kubelet

# The upstream kube-proxy, same module (go.sum lists its extra modules: netlink, knftables, ...): Services'
# ClusterIPs inside the e2e run's network namespace.
kube-proxy:
	@$(GO) version >/dev/null 2>&1 || { echo "make kube-proxy: no Go toolchain found (need Go >= 1.24 on PATH or in /usr/local/go)" >&2; exit 1; }
	cd $(LOCALCLUSTER_DIR) && $(GO) build $(LOCALCLUSTER_GOFLAGS) -o bin/kube-proxy k8s.io/kubernetes/cmd/kube-proxy

# Static (CGO_ENABLED=0: its own build-cache keys, ~3 min cold on 2 cores once, seconds after) so that its image
# needs nothing but the binary.
kube-scheduler:
	@$(GO) version >/dev/null 2>&1 || { echo "make kube-scheduler: no Go toolchain found (need Go >= 1.24 on PATH or in /usr/local/go)" >&2; exit 1; }
	cd $(LOCALCLUSTER_DIR) && CGO_ENABLED=0 $(GO) build $(KUBE_SCHEDULER_GOFLAGS) -o bin/kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler

# The images the deployed-stack tests import into real nodes. Each step skips its work when its inputs' content is
# unchanged (see mk/deploy.mk and build-kube-scheduler-image.sh), so with warm machine caches this takes seconds.
e2e-images: images kube-scheduler
	@STORAGE_FLAGS="$(BUILDAH_STORAGE)" $(LOCALCLUSTER_DIR)/images/build-kube-scheduler-image.sh $(KUBE_SCHEDULER) \
	  $(E2E_KUBE_SCHEDULER_IMAGE) $(IMAGE_WORK)/kube-scheduler-context
	@python3 -c 'import json, sys; \
	  json.dump({"storage_flags": sys.argv[2].split(), "images": dict(a.split("=", 1) for a in sys.argv[3:])}, \
	            open(sys.argv[1], "w"), indent=2)' $(E2E_IMAGES_MANIFEST) "$(BUILDAH_STORAGE)" \
	  $(foreach s,$(IMAGE_SERVICES),$(s)=$(IMAGE_REGISTRY)/hami-$(s):$(IMAGE_TAG)) kube-scheduler=$(E2E_KUBE_SCHEDULER_IMAGE)
	@echo "make e2e-images: wrote $(E2E_IMAGES_MANIFEST)"

# isolated.sh: the run gets its own network and mount namespaces; machine-wide sysctls are restored after it.
test-e2e: setup localcluster kubelet kube-proxy e2e-images
	LOCALCLUSTER_BIN=$(LOCALCLUSTER) KUBELET_BIN=$(KUBELET) KUBE_PROXY_BIN=$(KUBE_PROXY) tests/e2e/isolated.sh \
	  $(PYTEST) -q -p no:cacheprovider --timeout=$(E2E_PYTEST_TIMEOUT) --durations=20 tests/e2e

E2E_REAL_NODE_PY := tests/e2e/e2e_harness/real_node.py tests/e2e/e2e_harness/node_images.py \
  tests/e2e/e2e_harness/node_host.py tests/e2e/e2e_harness/node_config.py tests/e2e/e2e_harness/node_filesystem.py \
  tests/e2e/e2e_harness/node_daemons.py \
  tests/e2e/e2e_harness/nvidia_toolkit_double.py tests/e2e/e2e_harness/ports.py tests/e2e/real_node_support.py \
  tests/e2e/e2e_harness/stack_images.py tests/e2e/e2e_harness/deployed_stack.py tests/e2e/e2e_harness/deploy_overlays.py \
  tests/e2e/deployed_support.py \
  tests/e2e/hami_stack.py tests/e2e/e2e_harness/stack_manifests.py tests/e2e/e2e_harness/stack_processes.py \
  tests/e2e/e2e_harness/stack_nodes.py
lint-e2e: setup localcluster
	cd $(LOCALCLUSTER_DIR) && $(GO) vet $(LOCALCLUSTER_GOFLAGS) . && test -z "$$(gofmt -l .)"
	$(VENV)/bin/ruff check tests/e2e/conftest.py tests/e2e/test_real_node_*.py tests/e2e/test_security_containers.py tests/e2e/test_security_backstop.py tests/e2e/test_toolkit_double.py \
	  tests/e2e/test_vertical_slice.py tests/e2e/test_stack_mig.py tests/e2e/test_cluster_*.py tests/e2e/test_stack_images.py tests/e2e/test_deployed_*.py \
	  tests/e2e/falsified_deployed_*.py $(E2E_REAL_NODE_PY)
	$(VENV)/bin/ruff format --check tests/e2e/test_real_node_*.py tests/e2e/test_security_containers.py tests/e2e/test_security_backstop.py tests/e2e/test_toolkit_double.py \
	  tests/e2e/test_stack_images.py tests/e2e/test_stack_mig.py tests/e2e/test_deployed_*.py tests/e2e/falsified_deployed_*.py $(E2E_REAL_NODE_PY)
	cd tests/e2e && $(VENV)/bin/mypy --strict --follow-imports=silent $(patsubst tests/e2e/%,%,$(E2E_REAL_NODE_PY))
