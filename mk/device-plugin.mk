# hami-device-plugin (services/device-plugin): unit tests of the pure core, component tests over the real
# gRPC API on unix sockets with hamicore's fake NVML (1, 2 and 8 GPUs), strict typing, benchmark.
# Its tests against the local control plane (tests/e2e/test_device_plugin_*.py) run with the e2e suite.
TEST_TARGETS += test-device-plugin
LINT_TARGETS += lint-device-plugin
BENCH_TARGETS += bench-device-plugin

DEVICE_PLUGIN := services/device-plugin
DEVICE_PLUGIN_GEN := $(DEVICE_PLUGIN)/src/hami_device_plugin/_generated/v1beta1/api_pb2_grpc.py \
	$(DEVICE_PLUGIN)/src/hami_device_plugin/_generated/podresources/v1/api_pb2_grpc.py

DEVICE_PLUGIN_LAYOUT := $(DEVICE_PLUGIN)/src/hami_device_plugin/_generated/region_layout.py
HAMICORE_LAYOUT_HEADERS := hamicore/src/accounting/region_layout.h hamicore/src/accounting/spec_layout.h

.PHONY: device-plugin-protos device-plugin-layout test-device-plugin lint-device-plugin bench-device-plugin

# gRPC stubs (and mypy stubs) from proto/v1beta1/api.proto and proto/podresources/v1/api.proto into the git-ignored _generated/ package.
# The code also generates them on first use when missing (adapters/protos.py).
device-plugin-protos: setup $(DEVICE_PLUGIN_GEN)
$(DEVICE_PLUGIN_GEN) &: $(DEVICE_PLUGIN)/proto/v1beta1/api.proto $(DEVICE_PLUGIN)/proto/podresources/v1/api.proto | setup
	$(VPY) -m hami_device_plugin.adapters.protos --force

# hamicore's region and spec layouts for Python (core/layout.py) into the git-ignored _generated/ package: offsets,
# sizes and constants from the C headers, compiled (hamicore/tools/gen_region_layout.py; system python3 and cc, no
# venv). Every target that imports the plugin has it through `make setup`; the image build makes its own
# (deploy/images/build-hamicore.sh).
device-plugin-layout: $(DEVICE_PLUGIN_LAYOUT)
setup: $(DEVICE_PLUGIN_LAYOUT)
$(DEVICE_PLUGIN_LAYOUT): $(HAMICORE_LAYOUT_HEADERS) hamicore/tools/gen_region_layout.py | deps
	$(PYTHON) hamicore/tools/gen_region_layout.py --out $@

# The component tests load hamicore's fake libnvidia-ml.so.1 (hamicore/build/fake), hence `hamicore`.
test-device-plugin: setup device-plugin-protos hamicore
	HAMI_FAKE_NVML_DIR=$(ROOT)/hamicore/build/fake $(PYTEST) -q -p no:cacheprovider $(DEVICE_PLUGIN)/tests

lint-device-plugin: setup device-plugin-protos
	cd $(DEVICE_PLUGIN) && $(VENV)/bin/mypy --strict src/hami_device_plugin/core && $(VENV)/bin/mypy --strict src
	$(VENV)/bin/ruff check $(DEVICE_PLUGIN) tests/e2e/test_device_plugin_*.py hamicore/tools/gen_region_layout.py
	$(VENV)/bin/mypy --strict hamicore/tools/gen_region_layout.py
	cd $(DEVICE_PLUGIN) && $(VENV)/bin/lint-imports --config .importlinter

# Allocate latency with 110 pods on the node and the plugin's RSS, against the real process over its socket.
bench-device-plugin: setup device-plugin-protos hamicore
	HAMI_FAKE_NVML_DIR=$(ROOT)/hamicore/build/fake $(VPY) $(DEVICE_PLUGIN)/bench/bench_allocate.py
