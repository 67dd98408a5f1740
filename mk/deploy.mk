# Deploy manifests (deploy/kustomize), service images (services/*/Dockerfile), `make demo` and the end-to-end
# vertical slice (issue 11).
#
#   make images        build the four service images with buildah (daemonless, chroot isolation, overlay storage,
#                      layer cache) on the stack's three base images (deploy/images/Dockerfile: hami-runtime,
#                      hami-build, hami-hamicore), themselves on a local Debian bookworm base made with debootstrap;
#                      each service image is checked (entrypoint --help) when built, and every image is skipped when
#                      its inputs' content is unchanged
#   make images-check  check all four images again
#   make demo          the whole stack on the local control plane, with two real GPU nodes (root)
#   make test-deploy   only the deploy tests (tests/e2e/test_deploy_*.py); `make test` runs them with the
#                      e2e suite (test-e2e collects all of tests/e2e)
#
# `make images` needs root, Debian's mirror and PyPI on a fresh machine (debootstrap, package downloads; minutes);
# with the machine's buildah storage and build caches warm a rebuild takes seconds (see docs/deploy.md for timings).
# `make test` builds them through `make e2e-images` (mk/e2e.mk) for the tests that run the stack as deployed.
DEB_PACKAGES += kubectl
LINT_TARGETS += lint-deploy

KUBECTL ?= kubectl
IMAGE_REGISTRY ?= localhost
IMAGE_TAG ?= 0.1.0
IMAGE_SERVICES := webhook scheduler-extender device-plugin lib-installer
# Word list passed before every buildah subcommand (storage driver, optionally --root/--runroot). overlay, not vfs:
# vfs copies every layer in full for each step (minutes per image on our machines); overlay stacks them.
# BUILDAH_STORAGE="--storage-driver vfs" still works where overlay cannot (e.g. an overlay-on-overlay root).
BUILDAH_STORAGE ?= --storage-driver overlay
BUILDAH := buildah $(BUILDAH_STORAGE)
BASE_IMAGE ?= $(IMAGE_REGISTRY)/hami-debian:bookworm
IMAGE_WORK := $(ROOT)/.work/images
IMAGE_DEB_PACKAGES := buildah debootstrap
# A TLS-intercepting proxy's CA must reach pip/uv inside the build; it is mounted, never copied in.
HOST_CA_BUNDLE ?= $(or $(SSL_CERT_FILE),/etc/ssl/certs/ca-certificates.crt)
BUILD_CA_VOLUME := $(if $(wildcard $(HOST_CA_BUNDLE)),--volume $(HOST_CA_BUNDLE):/run/hami-build/ca.crt:ro)
# Extra `buildah bud` words (e.g. --build-arg UV_VERSION=...); part of each image's input digest.
IMAGE_BUILD_FLAGS ?=

# The stack's base images: the targets of deploy/images/Dockerfile, and what each is made from besides that file.
IMAGE_BASES := runtime build hamicore
IMAGE_BASE_INPUTS_runtime := deploy/images
IMAGE_BASE_INPUTS_build := deploy/images pyproject.toml uv.lock shared/pyproject.toml $(wildcard services/*/pyproject.toml)
IMAGE_BASE_INPUTS_hamicore := deploy/images uv.lock hamicore
image_ref = $(IMAGE_REGISTRY)/hami-$(1):$(IMAGE_TAG)
IMAGE_BUILD_ENV = STORAGE_FLAGS="$(BUILDAH_STORAGE)" STAMP_DIR=$(IMAGE_WORK)/stamps

.PHONY: images images-deps images-base images-check images-prune $(addprefix image-,$(IMAGE_BASES) $(IMAGE_SERVICES)) \
  test-deploy lint-deploy demo

images: $(addprefix image-,$(IMAGE_SERVICES))
	@echo "make images: $(foreach s,$(IMAGE_SERVICES),$(IMAGE_REGISTRY)/hami-$(s):$(IMAGE_TAG))"

# Only `make images` needs these, so they are not in DEB_PACKAGES (which every `make test` checks).
images-deps:
	@missing=""; for p in $(IMAGE_DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make images: installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

images-base: images-deps
	@BASE_NAME=$(BASE_IMAGE) STORAGE_FLAGS="$(BUILDAH_STORAGE)" deploy/images/debian-base.sh $(IMAGE_WORK)/base

# Layer cache (--layers; --force-rm: a failed step leaves no working container behind) and build caches for
# downloads (the Dockerfiles' RUN --mount=type=cache) make a rebuild after a source change redo only that service's
# install; the stamp in $(IMAGE_WORK)/stamps skips an image whose inputs' content is unchanged (a service image's
# inputs include the IDs of the base images it starts from). Layers of earlier builds stay in storage as the cache
# (`make images-prune` reclaims them).
$(addprefix image-,$(IMAGE_BASES)): image-%: images-base
	@$(IMAGE_BUILD_ENV) FROM_IMAGES="BASE_IMAGE=$(BASE_IMAGE)" BUILD_FLAGS="$(BUILD_CA_VOLUME) $(IMAGE_BUILD_FLAGS) --target $*" \
	  deploy/images/build-image.sh hami-$* $(call image_ref,$*) deploy/images/Dockerfile $(IMAGE_BASE_INPUTS_$*)

image-webhook image-scheduler-extender: image-runtime image-build
image-device-plugin image-lib-installer: image-runtime image-build image-hamicore
$(addprefix image-,$(IMAGE_SERVICES)): image-%:
	@$(IMAGE_BUILD_ENV) CHECK=service BUILD_FLAGS="$(BUILD_CA_VOLUME) $(IMAGE_BUILD_FLAGS)" FROM_IMAGES="\
	  HAMI_RUNTIME_IMAGE=$(call image_ref,runtime) HAMI_BUILD_IMAGE=$(call image_ref,build) \
	  HAMI_HAMICORE_IMAGE=$(call image_ref,hamicore)" \
	  deploy/images/build-image.sh hami-$* $(call image_ref,$*) services/$*/Dockerfile shared services/$*

# The layer cache grows with every rebuild (each changed step leaves its old layers behind: ~0.1-0.3 GB per source
# change, 1-2 GB per change under deploy/images/ or to uv.lock); this drops every layer no tagged image uses. The
# download caches stay, so the next build takes minutes, not the cold time.
images-prune:
	$(BUILDAH) rmi --prune >/dev/null
	@rm -rf $(IMAGE_WORK)/stamps

# Each image's entrypoint, run in a chroot from the image, answers --help; the lib installer's image installs its
# hamicore build.
images-check: images-deps
	@for s in $(IMAGE_SERVICES); do \
	  deploy/images/check-image.sh "$(BUILDAH_STORAGE)" $(IMAGE_REGISTRY)/hami-$$s:$(IMAGE_TAG) hami-$$s || exit 1; \
	done
	@if [ -n "$(filter lib-installer,$(IMAGE_SERVICES))" ]; then \
	  deploy/images/check-install.sh "$(BUILDAH_STORAGE)" $(IMAGE_REGISTRY)/hami-lib-installer:$(IMAGE_TAG); fi

# Rendering of every overlay and the server-side apply of the default overlay to the local control plane.
test-deploy: setup localcluster hamicore device-plugin-protos
	LOCALCLUSTER_BIN=$(LOCALCLUSTER) $(PYTEST) -q -p no:cacheprovider tests/e2e/test_deploy_manifests.py \
	  tests/e2e/test_dashboard_metrics.py tests/e2e/test_deploy_apply.py tests/e2e/test_vertical_slice.py

# The vertical slice in the e2e suite runs hamicore (libvgpu.so, the fake driver) and the device plugin (its
# generated gRPC stubs): make sure test-e2e finds them even when run on its own.
test-e2e: hamicore device-plugin-protos

lint-deploy: setup
	$(VENV)/bin/ruff check tests/e2e/test_deploy_manifests.py tests/e2e/test_dashboard_metrics.py tests/e2e/test_deploy_apply.py tests/e2e/hami_stack.py examples

# The whole stack locally: control plane, two real GPU nodes (kubelet + containerd + runc; toolkit and driver are
# test doubles), the four services, examples/pods; cleans up. Real nodes change network and mounts, so it runs in
# its own namespaces through tests/e2e/isolated.sh (root; restores the sysctls the kubelet changes).
# DEMO_FLAGS=--keep keeps the logs under .work/demo.
DEMO_FLAGS ?=
demo: setup hamicore localcluster kubelet device-plugin-protos
	LOCALCLUSTER_BIN=$(LOCALCLUSTER) KUBELET_BIN=$(KUBELET) tests/e2e/isolated.sh \
	  $(VPY) examples/demo/run_demo.py $(DEMO_FLAGS)
