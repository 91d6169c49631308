# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv and installs therasim with its extras on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck doctor clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	./scripts/install-llama-cpp $(BIN)/python
	# setuptools warns that a folder named like the package (therasim/) may shadow it: it is the package
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[local,studio,dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/therasim demo

doctor: $(STAMP)
	$(BIN)/therasim doctor

test: $(STAMP)
	./scripts/ensure-chromium
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy checks a tree of links shaped like the installed package (see [tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/therasim
	ln -s $(CURDIR)/therasim/* build/typecheck/therasim/
	for p in agents personas protocols simulations evaluation; do ln -s $(CURDIR)/$$p build/typecheck/therasim/$$p; done
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
