# songbot: two commands on a fresh machine with python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run demo test lint typecheck pytest bench clean sync invite

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

run: $(STAMP)
	$(BIN)/python bot.py

demo: $(STAMP)
	$(BIN)/python bot.py demo

sync: $(STAMP)
	$(BIN)/python bot.py sync

invite: $(STAMP)
	$(BIN)/python bot.py invite

lint: $(DEVSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEVSTAMP)
	$(BIN)/mypy --explicit-package-bases services cogs bot.py tests bench

pytest: $(DEVSTAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(DEVSTAMP)
	$(BIN)/python bench/stream.py
	$(BIN)/python bench/load.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
