# ttp-rulebus developer entry points. `make run` and `make test` work on a fresh clone
# with only Python >= 3.11 and pip: each creates .venv and installs exactly the versions
# pinned (with hashes) in uv.lock. `make lock` is the one deliberate way to upgrade them.

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed-stamp
RULES      ?= rules
# uv itself lives in its own small venv, so `uv sync` (which removes whatever the lock does
# not list from .venv) never uninstalls the tool that runs it.
UV_VERSION := 0.13.8
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
# Never fetch an interpreter: use the one PYTHON names, as pip would.
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test install lock lock-check lint typecheck unit rules-check bench bench-quick clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# --locked: fail, rather than resolve anew, when pyproject.toml and uv.lock disagree.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --compile-bytecode --extra dev --python $(PYTHON)
	touch $(STAMP)

install: $(STAMP)

## lock: upgrade every pinned dependency to the newest versions pyproject.toml allows.
lock: | $(UV)
	$(UV) lock --upgrade
	@echo "uv.lock upgraded: run make test, then commit it together with the code it needs."

## lock-check: fail when uv.lock does not match pyproject.toml (CI runs it first).
lock-check: | $(UV)
	$(UV) lock --check

## run: embedded NATS + PostgreSQL, the master, 2 workers, the web console and a demo feed
## (Ctrl-C stops all). Each process logs in as its NATS role; act as one with
## `.venv/bin/ttpctl --env-file .ttp/credentials/<role>.env ...` (it prints the exact lines,
## and the console's URL and logins).
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
test: lock-check lint typecheck rules-check unit

## bench: every benchmark (engine, master, fleet, control, console, chaos); each prints figures
## and a final JSON line.
bench: $(STAMP)
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.master
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.control
	$(BIN)/python -m bench.console
	$(BIN)/python -m bench.chaos

bench-quick: $(STAMP)
	$(BIN)/python -m bench.engine --quick
	$(BIN)/python -m bench.master --quick
	$(BIN)/python -m bench.fleet --quick
	$(BIN)/python -m bench.control --quick
	$(BIN)/python -m bench.console --quick

## compose-credentials: a random NATS password per role for compose.yaml, in .env (kept if set).
.PHONY: compose-credentials
compose-credentials:
	deploy/compose/make-credentials.sh

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache .hypothesis
