# hamicore's Vulkan layer: libvgpu_vk.so (VK_LAYER_HAMI_vgpu) and its manifests, built by `make hamicore`
# (hamicore/CMakeLists.txt adds hamicore/src/vk). Tests run through the real Vulkan loader and Mesa lavapipe,
# against the release build, then again in the ASan+UBSan and TSan builds. Bench: vkAllocateMemory cost.
DEB_PACKAGES += libvulkan1 libvulkan-dev mesa-vulkan-drivers vulkan-validationlayers vulkan-tools
TEST_TARGETS += test-hamicore-vulkan
LINT_TARGETS += lint-hamicore-vulkan
BENCH_TARGETS += bench-hamicore-vulkan

HAMICORE_VK_TARGETS := vgpu_vk hvk_unit_tests hvk_bench_alloc vk_alloc_probe
HAMICORE_VK_PYTEST = $(PYTEST) -q -p no:cacheprovider $(ROOT)/hamicore/tests/vulkan

.PHONY: test-hamicore-vulkan lint-hamicore-vulkan bench-hamicore-vulkan
# hamicore-asan / hamicore-tsan build only libvgpu.so's test set: add the layer's targets to those builds.
test-hamicore-vulkan: hamicore hamicore-asan hamicore-tsan
	cmake --build $(HAMICORE_DIR)/build-asan --target $(HAMICORE_VK_TARGETS)
	cmake --build $(HAMICORE_DIR)/build-tsan --target $(HAMICORE_VK_TARGETS)
	$(HAMICORE_VK_PYTEST)
	HAMI_BUILD_DIR=$(HAMICORE_DIR)/build-asan HAMI_SANITIZER=address $(HAMICORE_VK_PYTEST)
	HAMI_BUILD_DIR=$(HAMICORE_DIR)/build-tsan HAMI_SANITIZER=thread $(HAMICORE_VK_PYTEST)

bench-hamicore-vulkan: hamicore
	$(VPY) $(ROOT)/hamicore/tests/vulkan/bench_vk_alloc.py $(HAMICORE_DIR)/build

# The tests are typed too (the vulkan and cuda-bindings packages ship no stubs).
lint-hamicore-vulkan: setup
	$(VENV)/bin/mypy --strict --ignore-missing-imports $(ROOT)/hamicore/tests/vulkan
