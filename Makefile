# Two entry points: `make demo` (set up, then meta-train and evaluate on the embedded glyph data)
# and `make test` (set up, then run the whole test suite). Both are idempotent: set-up reruns
# only when the build inputs changed. `make lint` runs ruff and mypy (configured in pyproject.toml).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fewcore-installed
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -type f) $(wildcard plugins/*/pyproject.toml)
LINT_STAMP := $(VENV)/.lint-tools
PYTEST_ARGS ?=

.PHONY: install demo test lint docs bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# torch first: the extension builds against it without build isolation (which would fetch a
# second torch). MAX_JOBS bounds the parallel compile; by default one job per CPU (nproc). Then
# every first-party plugin distribution under plugins/, as a user would install it.
$(STAMP): $(BIN)/python $(BUILD_INPUTS)
	$(BIN)/pip install --quiet torch ninja
	MAX_JOBS=$${MAX_JOBS:-$$(nproc)} $(BIN)/pip install --quiet --no-build-isolation -e '.[test,docs]'
	for plugin in plugins/*/; do $(BIN)/pip install --quiet --no-build-isolation -e "$$plugin" || exit 1; done
	touch $@

demo: install
	$(BIN)/fewcore demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The documentation site (mkdocs.yml) into site/, every warning an error.
docs: install
	$(BIN)/mkdocs build --strict

# The linters, pinned so that a new release cannot fail CI on code that did not change.
$(LINT_STAMP): $(BIN)/python
	$(BIN)/pip install --quiet ruff==0.17.6 mypy==2.4.1
	touch $@

lint: install $(LINT_STAMP)
	$(BIN)/ruff check
	$(BIN)/mypy

bench: install
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only

clean:
	rm -rf $(VENV) build site *.egg-info fewcore/_C*.so fewcore/_build_info.json
