# lcron-pipelines: every developer and CI entry point. `make help` lists them.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/local
REGISTRY ?= localhost:5000
IMAGE ?= lcron-pipelines
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
EXPERIMENT ?= lcron
METHODS ?= bce icc rankflow fs_ranknet fs_lambdaloss arf arf_v2 lcron
STAGES ?= 2 3

.DEFAULT_GOAL := help
.PHONY: help install run test bench pipeline submit sweep-local compare image push lint clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PY_SYS) >/dev/null || { echo "need $(PY_SYS) (Python 3.11) on PATH"; exit 1; }
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[pipeline,dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install the project with its dependencies

run: $(STAMP) ## run the main job on the embedded synthetic data (see README)
	$(PY) -m lcron generate --out $(RUN_DIR)/recflow
	$(PY) -m lcron preprocess --source $(RUN_DIR)/recflow --out $(RUN_DIR)/shards-2 --stages 2
	$(PY) -m lcron preprocess --source $(RUN_DIR)/recflow --out $(RUN_DIR)/shards-3 --stages 3

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q

bench: $(STAMP) ## print the benchmark table (build/bench.json)
	$(PY) -m lcron bench --json build/bench.json

clean: ## remove build outputs and local runs (keeps .venv)
	rm -rf build runs .pytest_cache .hypothesis
