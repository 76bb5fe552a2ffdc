# ganray: `make demo` runs the demo job on the embedded stack; `make test` runs the suite.
# Both set themselves up: a virtualenv in .venv with CPU torch 2.13.0 installed first
# (from this machine's disk where the wheel is there), then ganray with pinned extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean-demo
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 tests

clean-demo:
	rm -rf ganray-demo
