# hami-lib-installer (services/lib-installer): unit, filesystem, crash-injection and daemon tests.
# The tests build small real shared libraries and a reader program with the system C compiler,
# mount small tmpfs filesystems (root) for the disk-full and read-only cases, and load the installed
# Vulkan manifest with the real loader (libvulkan1 + lavapipe).
DEB_PACKAGES += gcc libc6-dev util-linux mount e2fsprogs libvulkan1 mesa-vulkan-drivers
TEST_TARGETS += test-lib-installer
LINT_TARGETS += lint-lib-installer
BENCH_TARGETS += bench-lib-installer

.PHONY: test-lib-installer lint-lib-installer bench-lib-installer
test-lib-installer: setup
	$(PYTEST) -q -p no:cacheprovider services/lib-installer/tests

# Strict typing for core/ (pure logic), and for the rest of the package, the tests and the benchmark too; the layer
# contracts (.importlinter).
lint-lib-installer: setup
	$(VENV)/bin/mypy --strict services/lib-installer/src/hami_lib_installer/core
	$(VENV)/bin/mypy --strict services/lib-installer/src
	cd services/lib-installer/tests && $(VENV)/bin/mypy --strict . ../bench
	cd services/lib-installer && $(VENV)/bin/lint-imports --config .importlinter

# Install timings (fresh, unchanged re-run, upgrade) with the hamicore build when present,
# else with test libraries of the same size; the table goes into services/lib-installer/README.md.
bench-lib-installer: setup
	$(VPY) services/lib-installer/bench/bench_install.py
