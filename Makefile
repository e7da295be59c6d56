# Sinyal: two commands for a newcomer.
#   make run    set up .venv; start InfluxDB, the collector and an agent on loopback (live view)
#   make test   set up .venv (and, as root, the system tools the tests use), lint, type-check, test
#   make drill  (root) the voting-day drill: lab stations with real agents, scripted outages, a
#               report of time to flag and to clear (docs/drill.md); DRILL_ARGS=--short: CI's form
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
LINTED := agent collector grafana tests deploy benchmarks

.PHONY: run status drill test lint typecheck venv system-deps clean help

help:
	@echo "make run   - set up and run the local stack: InfluxDB, collector, agent (live view)"
	@echo "make status - the control-room view of that stack (in another terminal)"
	@echo "make test  - set up and run lint, type checks and the whole test suite"
	@echo "make drill - (as root) the voting-day drill; report in var/drill/ (DRILL_ARGS=--short)"

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

# The drill builds network namespaces (ip netns, tc, iptables): it needs root.
drill: $(STAMP)
	@if [ "$$(id -u)" -ne 0 ]; then \
	    echo "make drill: needs root (it builds network namespaces with ip, tc and iptables);" \
	         "run it as root, e.g. sudo make drill" >&2; \
	    exit 2; \
	fi
	deploy/local/system-deps.sh
	$(BIN)/python -m tests.drill $(DRILL_ARGS)

system-deps:
	deploy/local/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
