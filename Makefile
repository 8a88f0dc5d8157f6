# Everything a fresh machine needs is built here: only Python 3.11+ and make are assumed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,html]'
	touch $(STAMP)

## The main job: measure framework-comparison claims on the examples (table + reports/claims.*).
## The demo is examples/claims in this repository, not part of the installed package.
demo: $(STAMP)
	$(BIN)/python -m examples.claims

## The test suite, with the type and lint checks. The HTML report's browser test needs
## Chromium, the database tests PostgreSQL: installed from Debian's packages when missing
## (as root; otherwise those tests skip with the reason).
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium is not installed and could not be (not root?): the HTML rendering test will skip"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq postgresql) \
		|| echo "postgresql is not installed and could not be (not root?): the PostgreSQL tests will skip"
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

## Overhead benchmark (ratios against floors measured in the same run).
bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
