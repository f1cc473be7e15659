# The two set-up commands: `make run` (the hub with its demo) and `make test` (the whole suite).
# Each creates the virtualenv it needs on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/callhub serve --demo

test: $(STAMP)
	$(VENV)/bin/ruff check hub handlers tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# The standard fan-out and ingest scenarios, three runs each, medians (bench/README.md).
bench: $(STAMP)
	$(PY) -m bench.run_all --repeat 3 --pin --out bench/results

clean:
	rm -rf $(VENV) callhub-data .pytest_cache
