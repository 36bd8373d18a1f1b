# The two README commands: `make run` (the pipeline on the default data) and `make test` (every test;
# `make test-fast` leaves out the end-to-end runs marked slow).
# Each creates .venv and installs the project on first use, so either works first on a fresh clone.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Stage commands (python -m stages.*) must run in the venv's interpreter.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-fast test-cluster bench lint clean-venv servers servers-status servers-stop

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,team]'
	touch $(STAMP)

install: $(STAMP)

run: install
	dvc repro
	python -m alexnet.summary reports/metrics.json

# Three pytest workers on two cores, each taking whole test files (module fixtures are built once):
# the end-to-end tests wait on servers, subprocesses and polls, and with two workers a quarter of
# the cores' time went idle (docs/results.md). The longest files are handed out first
# (tests/conftest.py: LONGEST_FIRST). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 3
# The fast subset waits on little: there a third worker's start-up costs more than it fills (85 s against 74 s).
FAST_WORKERS ?= 2
test: install
	python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not cluster"

test-fast: install
	python -m pytest -q -n $(FAST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow and not cluster"

# Hosts as network namespaces on this machine (root; docs/scale-out.md; skipped where namespaces
# cannot be made). One process: the clusters' own servers and members already share the 2 cores,
# and a Ray node declared dead under a second file's load was not retried in time.
test-cluster: install
	python -m pytest -q -m cluster

bench: install
	python benchmarks/preprocess.py
	python benchmarks/model.py
	python benchmarks/loader.py
	python benchmarks/predict.py

# A team's MLflow and Prefect on PostgreSQL (docs/team.md): set ALEXNET_DB_URL=postgresql://USER:PASSWORD@HOST:PORT.
servers: install
	python -m alexnet.servers start

servers-status: install
	python -m alexnet.servers status

servers-stop: install
	python -m alexnet.servers stop

lint: install
	ruff check alexnet stages flows tests benchmarks scripts

clean-venv:
	rm -rf $(VENV)
