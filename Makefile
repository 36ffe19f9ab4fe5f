# Every target builds its own virtual environment first: a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/pixverse-batch demo --out out/demo

lint: $(BIN)/.installed
	$(BIN)/ruff check pipeline tests benchmarks manifests
	$(BIN)/ruff format --check pipeline tests benchmarks manifests

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/python -m pytest

test: lint typecheck unit

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_slots.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) out build *.egg-info
