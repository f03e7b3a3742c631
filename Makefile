# lmm — LLaVA-1.5 experiment platform. `make help` lists the targets.
SHELL := /bin/bash
PY ?= .venv/bin/python
VENV ?= .venv
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint train eval score ui bench-gen clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

setup: ## Create .venv: torch + torchvision pinned first, then the package (dev extras) held to them
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_PINS)
	printf '%s\n' $(TORCH_PINS) > $(VENV)/torch-constraints.txt
	$(VENV)/bin/pip install -q -c $(VENV)/torch-constraints.txt -e '.[dev]'

test: ## Run the whole test suite (slow end-to-end tests included)
	$(PY) -m pytest -q

test-fast: ## Run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

lint: ## Ruff over the package, entry points and tests
	$(VENV)/bin/ruff check src tests train.py

train: ## Train (default: tiny twin, both stages, synthetic data, CPU); ARGS="..." passes Hydra overrides
	$(PY) train.py $(ARGS)

eval: ## Evaluate a checkpoint: make eval CKPT=outputs/<run> [ARGS="benchmarks=[pope,gqa]"]
	$(PY) eval.py checkpoint=$(CKPT) $(ARGS)

ui: ## Serve the MLflow UI on 127.0.0.1 for a store: make ui [DB=outputs/<run>/mlflow.db] [PORT=5000]
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(or $(DB),$(lastword $(sort $(wildcard outputs/*/mlflow.db)))) --host 127.0.0.1 --port $(or $(PORT),5000)

bench-gen: ## Benchmark batched vs one-at-a-time generation (answers/s, identical answers, ratio)
	$(PY) benchmarks/generation_benchmark.py

score: ## Score a predictions file: make score BENCH=pope PRED=answers.jsonl ROOT=playground/data/eval
	$(PY) -m lmm.evaluation score $(BENCH) --predictions $(PRED) --data-root $(ROOT)

clean: ## Remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
