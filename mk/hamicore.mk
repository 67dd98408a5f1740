# hamicore (C): libvgpu.so, its test doubles of the driver, sanitizer variants, tests, bench.
DEB_PACKAGES += cmake ninja-build gcc libc6-dev valgrind util-linux mount
TEST_TARGETS += test-hamicore
LINT_TARGETS += lint-hamicore
BENCH_TARGETS += bench-hamicore

HAMICORE_DIR := $(ROOT)/hamicore
# Directories of cuda.h and nvml.h inside the nvidia-cuda-runtime / nvidia-nvml-dev wheels.
HAMICORE_CUDA_INCLUDE = $(shell $(VPY) -c 'import glob, os, nvidia; \
  hs = [p for d in nvidia.__path__ for h in ("cuda.h", "nvml.h") for p in glob.glob(os.path.join(d, "*", "include", h))]; \
  print(";".join(sorted({os.path.dirname(p) for p in hs})))' 2>/dev/null)
# Targets the sanitizer variants need (the Vulkan layer has its own checks).
HAMICORE_TEST_TARGETS := vgpu vgpu_layout11 vgpu_layout12 fakecuda fakenvml cuda_probe unit_core unit_limiter ctor_client hami-region-inspect hami-bench

# $(1) build dir, $(2) HAMI_SANITIZE, $(3) targets ("" = all)
define hamicore_build
	@test -n "$(HAMICORE_CUDA_INCLUDE)" || { echo "hamicore: cuda.h/nvml.h not found in .venv (run make setup)" >&2; exit 1; }
	@test -f $(1)/build.ninja || cmake -S $(HAMICORE_DIR) -B $(1) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DHAMI_SANITIZE=$(2) "-DCUDA_INCLUDE_DIR=$(HAMICORE_CUDA_INCLUDE)" >/dev/null
	cmake --build $(1) $(if $(3),--target $(3))
endef

.PHONY: hamicore hamicore-asan hamicore-tsan test-hamicore lint-hamicore bench-hamicore
hamicore: setup
	$(call hamicore_build,$(HAMICORE_DIR)/build,,)

hamicore-asan: setup
	$(call hamicore_build,$(HAMICORE_DIR)/build-asan,address,$(HAMICORE_TEST_TARGETS))

hamicore-tsan: setup
	$(call hamicore_build,$(HAMICORE_DIR)/build-tsan,thread,$(HAMICORE_TEST_TARGETS))

# The full suite against the release build, then again against ASan+UBSan and TSan builds
# (the slow multi-process race is sized down there; every hook path still runs).
test-hamicore: hamicore hamicore-asan hamicore-tsan
	$(PYTEST) -q -p no:cacheprovider hamicore/tests --ignore=hamicore/tests/vulkan
	HAMI_BUILD_DIR=$(HAMICORE_DIR)/build-asan HAMI_SANITIZER=address $(PYTEST) -q -p no:cacheprovider hamicore/tests --ignore=hamicore/tests/vulkan
	HAMI_BUILD_DIR=$(HAMICORE_DIR)/build-tsan HAMI_SANITIZER=thread $(PYTEST) -q -p no:cacheprovider hamicore/tests --ignore=hamicore/tests/vulkan

# The export list (no vk* symbol in libvgpu.so), ruff and mypy --strict on the Python tests.
lint-hamicore: hamicore
	@if nm -D --defined-only $(HAMICORE_DIR)/build/libvgpu.so | awk '{print $$3}' | grep -q '^vk'; then \
	  echo "libvgpu.so exports vk* symbols" >&2; exit 1; fi
	$(VENV)/bin/ruff check hamicore/tests/conftest.py hamicore/tests/spec_mount.py hamicore/tests/limiter_harness.py hamicore/tests/monitor_runner.py \
	  hamicore/tests/test_*.py hamicore/tests/bench
	$(VENV)/bin/mypy --strict hamicore/tests/conftest.py hamicore/tests/spec_mount.py hamicore/tests/limiter_harness.py hamicore/tests/monitor_runner.py \
	  hamicore/tests/test_*.py hamicore/tests/bench/run_bench.py

bench-hamicore: hamicore
	$(VPY) $(HAMICORE_DIR)/tests/bench/run_bench.py --build $(HAMICORE_DIR)/build
