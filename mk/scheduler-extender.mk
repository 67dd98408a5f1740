# hami-scheduler-extender (services/scheduler-extender): unit, property and component tests; strict typing of the
# pure core; the 5,000-node benchmark (not part of `make test`).
TEST_TARGETS += test-scheduler-extender
LINT_TARGETS += lint-scheduler-extender
BENCH_TARGETS += bench-extender

EXTENDER_DIR := services/scheduler-extender

.PHONY: test-scheduler-extender lint-scheduler-extender bench-extender
test-scheduler-extender: setup
	$(PYTEST) -q -p no:cacheprovider $(EXTENDER_DIR)/tests

lint-scheduler-extender: setup
	$(VENV)/bin/mypy --strict $(EXTENDER_DIR)/src/hami_scheduler_extender/core
	$(VENV)/bin/mypy --strict $(EXTENDER_DIR)/src
	$(VENV)/bin/ruff check $(EXTENDER_DIR)
	cd $(EXTENDER_DIR) && $(VENV)/bin/lint-imports --config .importlinter

# Synthetic 5,000 nodes x 8 GPUs with 40,000 running GPU pods: first loaded into the local control plane
# (`localcluster` from mk/e2e.mk) and served to the extender process as deployed (its own list + watch: cache
# sync, RSS, filter/prioritize over 500 candidates over HTTP); then the same in-process; then pods/s bound
# through the real kube-scheduler. About 10 minutes on 2 cores (loading 45,000 objects: ~3-5 of them).
bench-extender: setup localcluster
	LOCALCLUSTER_BIN=$(LOCALCLUSTER) $(VPY) $(EXTENDER_DIR)/bench/bench_extender.py --deployed --e2e
	# The MIG variant (issue 19): a quarter of the nodes in MIG mode, in-process.
	$(VPY) $(EXTENDER_DIR)/bench/bench_extender.py --mig-every 4
	# The topology variant (issue 21): every node with interconnect data, half the requests topology-aware.
	$(VPY) $(EXTENDER_DIR)/bench/bench_extender.py --topology --no-quotas
