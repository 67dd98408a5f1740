# The common library (shared/): unit and property tests, strict typing.
TEST_TARGETS += test-shared
LINT_TARGETS += lint-shared lint-python

.PHONY: test-shared lint-shared lint-python
test-shared: setup
	$(PYTEST) -q shared/tests

lint-shared: setup
	$(VENV)/bin/mypy --strict shared/src shared/tests

# ruff over every Python tree of the workspace.
lint-python: setup
	$(VENV)/bin/ruff check shared services tests hamicore
