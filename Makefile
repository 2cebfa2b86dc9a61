# The two commands of README.md: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test lint unit services services-down bench chaos clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# REST on :8080, gRPC on :50051, saga execution; embedded SQLite in data/ (Ctrl-C stops it).
run: $(STAMP)
	$(BIN)/saga serve

demo: $(STAMP)
	$(BIN)/saga demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

services:
	bash scripts/services.sh up

services-down:
	bash scripts/services.sh down

# Lint, then every test tier. Services (PostgreSQL, Kafka) are started by scripts/services.sh;
# under CI=true a missing service fails the run instead of skipping its tests.
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	bash scripts/services.sh up
	set -a; [ -f .services/env ] && . .services/env; set +a; \
	  $(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Benchmarks (BENCHMARKS.md): installs the bench extras, starts the services and the durable
# bench cluster (scripts/postgres.sh start-durable: fsync on, pg_stat_statements), runs every
# figure (< 35 min; BENCH_ARGS=--quick for the ~2-minute subset) and regenerates BENCHMARKS.md.
# wrk (Debian) drives the REST API figure; without it a Python load generator stands in.
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq >/dev/null; apt-get install -y -q wrk >/dev/null; }; } || \
	  echo "bench: wrk not installed (apt-get install wrk); the REST load generator is Python"
	bash scripts/services.sh up
	bash scripts/postgres.sh start-durable || \
	  echo "bench: the durable cluster did not start; its figures run on the test cluster or not at all"
	set -a; [ -f .services/env ] && . .services/env; \
	  [ -f .services/postgres-durable.env ] && . .services/postgres-durable.env; set +a; \
	  $(BIN)/python -m bench $(BENCH_ARGS)

# Chaos run (RELIABILITY.md): workers SIGKILLed and SIGSTOPped, PostgreSQL restarted, the broker
# stopped, while sagas run; prints and records the invariant figures (10 minutes by default;
# CHAOS_ARGS='--minutes 2 --seed 7' for a shorter run). scripts/services.sh installs PostgreSQL
# and Kafka; the run starts a server and a broker of its own, so the shared ones are not touched.
chaos: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	bash scripts/services.sh up
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .services build *.egg-info
