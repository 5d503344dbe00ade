# Two entry points: `make demo` (set up, then meta-train and evaluate on the embedded glyph data)
# and `make test` (set up, then run the whole test suite). Both are idempotent: set-up reruns
# only when the build inputs changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fewcore-installed
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -type f) \
	$(wildcard plugins/fewcore-plugin-example/pyproject.toml)
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# torch first: the extension builds against it without build isolation (which would fetch a
# second torch). MAX_JOBS bounds the parallel compile to this machine's cores.
$(STAMP): $(BIN)/python $(BUILD_INPUTS)
	$(BIN)/pip install --quiet torch ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(BIN)/pip install --quiet --no-build-isolation -e '.[test]'
	$(BIN)/pip install --quiet --no-build-isolation -e plugins/fewcore-plugin-example
	touch $@

demo: install
	$(BIN)/fewcore demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info fewcore/_C*.so fewcore/_build_info.json
