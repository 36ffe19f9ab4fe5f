# Every target builds its own virtual environment first: a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench reliability browser-test screenshot clean

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
	$(BIN)/python benchmarks/bench_scale.py --write docs/benchmarks.md

# The full reliability suite (SIGKILLs, chaos, two runs, disk full, no replay, the state
# machine), figures printed; about 10 minutes on 2 cores. `make test` runs the fast versions.
reliability: $(BIN)/.installed
	$(BIN)/python -m tests.reliability --json out/reliability.json

# report.html in headless Chromium (Debian's package, driven by Playwright); installs both when
# it can, else skips saying why (.ci/browser-test). `make test` does not need a browser.
browser-test: $(BIN)/.installed
	VENV=$(VENV) bash .ci/browser-test

# the same, keeping the page's screenshot as docs/report-page.png
screenshot: $(BIN)/.installed
	REPORT_SCREENSHOT=docs/report-page.png VENV=$(VENV) bash .ci/browser-test

clean:
	rm -rf $(VENV) out build *.egg-info
