# Tradeplane — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PORT ?= 8000
export PORT
HOST ?= 127.0.0.1
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

# uv comes from PATH when present, else it is bootstrapped once into .uv/ with pip.
UV := $(or $(shell command -v uv 2>/dev/null),.uv/bin/uv)

# Django 6 needs Python >= 3.12. Look on PATH first, then in pyenv's versions.
define FIND_PYTHON
for c in $${PYTHON:-} python3.14 python3.13 python3.12 python3 \
         $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -rV); do \
  p=$$(command -v $$c 2>/dev/null) || continue; \
  $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; exit 0; }; \
done; exit 1
endef
BASE_PYTHON = $(shell $(FIND_PYTHON))

# Test services: real PostgreSQL and Redis (override with DATABASE_URL / REDIS_URL).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/tradeplane
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

# make serve: web worker processes, task worker processes, and whether this host runs the
# one beat scheduler of the deployment (docs/deploy.md).
TRADEPLANE_WORKERS ?= 4
TRADEPLANE_TASK_CONCURRENCY ?= 4
TRADEPLANE_BEAT ?= 1
TRADEPLANE_MIGRATE ?= 1
CELERY := $(PY) -m celery -A controlplane

.PHONY: help install install-dev run serve test lint typecheck pytest check-services bench-mint bench-mcp bench-trade clean

help:
	@echo "make run         install, migrate, seed the demo and serve on http://$(HOST):$(PORT)"
	@echo "make serve       production: migrate, then web, task worker and beat processes"
	@echo "                 (needs DATABASE_URL and REDIS_URL; see docs/deploy.md)"
	@echo "make test        lint, type-check and run every test against PostgreSQL and Redis"
	@echo "make bench-mint  benchmark POST /auth/tokens/user"
	@echo "make bench-mcp   benchmark MCP tool calls against a bare MCP server"
	@echo "make bench-trade benchmark the create_order + confirm_trade round trip"

$(UV):
	@py="$(BASE_PYTHON)"; if [ -z "$$py" ]; then echo "error: Python >= 3.12 not found (set PYTHON=/path/to/python3.12)" >&2; exit 1; fi; \
	$$py -m venv .uv && .uv/bin/pip install --quiet uv

# A stamp per dependency set so that `make run` never reinstalls needlessly.
$(VENV)/.installed-%: pyproject.toml uv.lock | $(UV)
	@py="$(BASE_PYTHON)"; if [ -z "$$py" ]; then echo "error: Python >= 3.12 not found (set PYTHON=/path/to/python3.12)" >&2; exit 1; fi; \
	$(UV) sync --locked --python "$$py" $(if $(filter dev,$*),,--no-dev) --quiet
	@rm -f $(VENV)/.installed-*; touch $@

install: $(VENV)/.installed-prod
install-dev: $(VENV)/.installed-dev

# The web server, and next to it one task worker with the beat scheduler inside it. Without
# REDIS_URL the task queue is files under var/celery/ (kombu's filesystem transport). The
# worker is stopped when the server stops, however that happens.
run: install
	$(PY) manage.py migrate --no-input
	$(PY) manage.py quickstart
	@LOG_LEVEL="$${LOG_LEVEL:-WARNING}" $(CELERY) --quiet worker --beat --pool=threads --concurrency=4 \
	  --without-gossip --without-mingle --without-heartbeat & worker=$$!; \
	trap 'kill -TERM $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(PY) -m uvicorn controlplane.asgi:application --host $(HOST) --port $(PORT) --no-access-log

# Production on one host: TRADEPLANE_WORKERS web processes, a prefork task worker and, unless
# TRADEPLANE_BEAT=0, the beat (exactly one per deployment). More web processes than one need
# the stateless MCP endpoint: a 2025-11-25 session lives in one process. When any of them
# ends, the others are stopped too and make fails, for the process manager to restart it all.
serve: install
	@if [ -z "$$DATABASE_URL" ] || [ -z "$$REDIS_URL" ]; then \
	  echo "error: make serve needs DATABASE_URL (PostgreSQL) and REDIS_URL" >&2; exit 1; fi
	@if [ "$(TRADEPLANE_WORKERS)" -gt 1 ] && [ "$${TRADEPLANE_MCP_STATELESS:-true}" != true ]; then \
	  echo "error: TRADEPLANE_WORKERS > 1 needs TRADEPLANE_MCP_STATELESS=true" >&2; exit 1; fi
	@if [ "$(TRADEPLANE_MIGRATE)" = 1 ]; then $(PY) manage.py migrate --no-input; fi
	$(PY) manage.py collectstatic --no-input --verbosity 0
	@pids=""; \
	trap 'kill -TERM $$pids 2>/dev/null; wait $$pids 2>/dev/null' EXIT; trap 'exit 0' INT TERM; \
	$(CELERY) worker --pool=prefork --concurrency=$(TRADEPLANE_TASK_CONCURRENCY) \
	  --without-gossip --without-mingle --loglevel=INFO & pids="$$pids $$!"; \
	if [ "$(TRADEPLANE_BEAT)" = 1 ]; then $(CELERY) beat --loglevel=INFO & pids="$$pids $$!"; fi; \
	if [ "$(TRADEPLANE_WORKERS)" -gt 1 ]; then export TRADEPLANE_MCP_STATELESS=true; fi; \
	$(PY) -m uvicorn controlplane.asgi:application --host $(HOST) --port $(PORT) \
	  --workers $(TRADEPLANE_WORKERS) --no-access-log & pids="$$pids $$!"; \
	while sleep 1; do for pid in $$pids; do kill -0 $$pid 2>/dev/null || { \
	  echo "error: process $$pid of make serve ended; stopping the others" >&2; exit 1; }; done; done

check-services: install-dev
	@DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
	  $(PY) -m tests.services

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-dev
	$(VENV)/bin/mypy .

pytest: check-services
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
	  $(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench-mint: check-services
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}_bench" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
	  $(PY) -m bench.bench_mint

bench-mcp: check-services
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}_bench" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
	  $(PY) -m bench.bench_mcp

bench-trade: check-services
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}_bench" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
	  $(PY) -m bench.bench_trade

clean:
	rm -rf $(VENV) .uv var .mypy_cache .ruff_cache .pytest_cache
