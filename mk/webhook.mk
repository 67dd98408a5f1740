# hami-webhook (services/webhook): unit, property, fuzz, TLS and process tests; strict typing; benchmark.
# The e2e test (tests/e2e/test_webhook_e2e.py) runs with the e2e suite.
TEST_TARGETS += test-webhook
LINT_TARGETS += lint-webhook
BENCH_TARGETS += bench-webhook

WEBHOOK := services/webhook

.PHONY: test-webhook lint-webhook bench-webhook
test-webhook: setup
	$(PYTEST) -q $(WEBHOOK)/tests

lint-webhook: setup
	$(VENV)/bin/mypy --strict $(WEBHOOK)/src $(WEBHOOK)/tests $(WEBHOOK)/bench
	$(VENV)/bin/ruff check $(WEBHOOK) tests/e2e/test_webhook_e2e.py tests/e2e/test_security_*.py
	cd $(WEBHOOK) && $(VENV)/bin/lint-imports --config .importlinter

# p99 latency at a fixed request rate over TLS on loopback against the real hami-webhook process.
BENCH_WEBHOOK_RATE ?= 500
BENCH_WEBHOOK_SECONDS ?= 30
bench-webhook: setup
	$(VPY) $(WEBHOOK)/bench/bench_webhook.py --rate $(BENCH_WEBHOOK_RATE) --duration $(BENCH_WEBHOOK_SECONDS)
	$(VPY) $(WEBHOOK)/bench/bench_webhook.py --rate $(BENCH_WEBHOOK_RATE) --duration $(BENCH_WEBHOOK_SECONDS) --path /validate
