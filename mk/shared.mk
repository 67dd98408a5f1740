# The common library (shared/): unit and property tests, strict typing.
TEST_TARGETS += test-shared
LINT_TARGETS += lint-shared lint-python

.PHONY: test-shared lint-shared lint-python
test-shared: setup
	$(PYTEST) -q shared/tests

# The repository-wide import contracts (.importlinter: services never import each other, hami_shared no service).
# `make test-shared` checks every contract too (shared/tests/test_import_contracts.py).
lint-shared: setup
	$(VENV)/bin/mypy --strict shared/src shared/tests
	$(VENV)/bin/lint-imports --config .importlinter

# ruff over every Python tree of the workspace: lint and format.
lint-python: setup
	$(VENV)/bin/ruff check shared services tests hamicore
	$(VENV)/bin/ruff format --check shared services tests hamicore
