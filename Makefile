# ttp-rulebus developer entry points. `make run` and `make test` work on a fresh clone
# with only Python >= 3.11 and pip: each creates .venv and installs what it needs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RULES  ?= rules

.PHONY: run test install lint typecheck unit rules-check bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: embedded NATS + PostgreSQL, the master, 2 workers and a demo feed (Ctrl-C stops all).
run: $(STAMP)
	$(BIN)/ttpctl dev --demo

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench scripts
	$(BIN)/ruff format --check shared services

typecheck: $(STAMP)
	$(BIN)/mypy --strict shared services

rules-check: $(STAMP)
	$(BIN)/ttpctl rules validate --strict $(RULES)
	$(BIN)/ttpctl rules test $(RULES)

# pytest exits 5 when it collected nothing; make fails on any non-zero exit, so an
# empty run never passes.
unit: $(STAMP)
	$(BIN)/python -m pytest

## test: everything CI checks.
test: lint typecheck rules-check unit

## bench: every benchmark (engine, master, fleet); each prints figures and a final JSON line.
bench: $(STAMP)
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.master
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.control

bench-quick: $(STAMP)
	$(BIN)/python -m bench.engine --quick
	$(BIN)/python -m bench.master --quick
	$(BIN)/python -m bench.fleet --quick
	$(BIN)/python -m bench.control --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
