# Synergos: `make demo` runs the guide's flow on this machine, `make lint` runs ruff and mypy,
# `make test` runs lint and then the full suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synergos-installed

.PHONY: install demo lint test bench clean

install: $(STAMP)

# torch first and pinned: 2.13.0 is a local CPU wheel; anything else pulls CUDA packages.
# Debian's rabbitmq-server carries the Synergos MQ for the cluster demo and tests.
$(STAMP): pyproject.toml
	@command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { \
	  echo "installing Debian's rabbitmq-server"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3-venv is missing; installing it with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/python -m synergos_local.demo

# Every linter runs, so one report shows all of them; the target fails if any of them failed.
# ruff checks src and tests (`ruff format --diff src tests` shows the formatter's changes);
# mypy checks src (its `files` in pyproject.toml), strict for synergos_core and synergos_driver.
lint: install
	status=0; \
	$(BIN)/ruff check src tests || status=1; \
	$(BIN)/ruff format --check --output-format concise src tests || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

test: lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/grid_round.py

clean:
	rm -rf demo_workspace .pytest_cache .mypy_cache .ruff_cache
