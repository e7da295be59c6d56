# Sinyal: two commands for a newcomer.
#   make run    set up .venv; start InfluxDB, the collector and an agent on loopback (live view)
#   make test   set up .venv (and, as root, the system tools the tests use), lint, type-check, test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
LINTED := agent collector grafana tests deploy benchmarks

.PHONY: run status test lint typecheck venv system-deps clean help

help:
	@echo "make run   - set up and run the local stack: InfluxDB, collector, agent (live view)"
	@echo "make status - the control-room view of that stack (in another terminal)"
	@echo "make test  - set up and run lint, type checks and the whole test suite"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

run: $(STAMP)
	deploy/local/run.sh

status: $(STAMP)
	$(BIN)/sinyal-collector status --watch -c var/local/collector.yaml

system-deps:
	deploy/local/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
