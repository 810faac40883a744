# brainage: two commands do all setup on a fresh machine (Python 3.11 + pip, no conda):
#   make test   create .venv, install pinned dependencies, lint (ruff), type-check (mypy), run the test suite
#   (make test-fast: the same checks, then only the tests not marked slow)
#   make book   same setup, then build the default cohort, run the notebooks, render the book
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BRAINAGE := $(VENV)/bin/brainage
STAMP := $(VENV)/.installed-stamp
# Outputs of `make book` (all gitignored): the cohort, papermill runs, the preprocessing cache.
export BRAINAGE_CACHE ?= $(CURDIR)/cache
PROFILE ?= default
JOBS ?= 1

.PHONY: help setup lint test test-fast test-notebooks book bench lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned dependencies

lint: $(STAMP)  ## ruff lint and format checks, mypy on brainage_core
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy brainage_core

test: lint  ## lint, then run the whole test suite (every notebook in smoke mode, by the batch runner)
	$(PY) -m pytest

test-fast: lint  ## lint, then the tests not marked slow (minutes, not the notebooks)
	$(PY) -m pytest -m "not slow"

test-notebooks: $(STAMP)  ## run each notebook alone with its own defaults (smoke mode, nbmake; minutes)
	$(PY) -m pytest --nbmake --nbmake-timeout=900 book

book: $(STAMP)  ## build the default cohort, run the book's notebooks (PROFILE=default) and render it
	$(BRAINAGE) book run --profile $(PROFILE) --jobs $(JOBS)
	$(BRAINAGE) book build --profile $(PROFILE)
	@echo "Book: $(CURDIR)/_build/html/index.html"

bench: $(STAMP)  ## run the benchmarks, results in bench/results.json
	$(BRAINAGE) bench --out bench/results.json

lock: $(STAMP)  ## re-pin requirements/constraints.txt from the current .venv
	@{ echo "# Every package of the tested environment, pinned (pip freeze); make installs with -c this file."; \
	   echo "# Regenerate after changing pyproject.toml:  make lock"; \
	   $(PY) -m pip freeze --exclude-editable | grep -vi '^brainage' | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements/constraints.txt

clean:  ## remove build outputs (keeps .venv and the cache)
	rm -rf _build _book_runs
