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
.PHONY: help setup test test-fast test-learning test-long table2 table2-mini lint train train-row plan resume sweep-data sweep-llm synth shards eval score ui tracking-server merge-runs \
	compare bench-gen bench-train bench-data rehearse-data bench-gpu merge-lora export-hf import-hf clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

setup: ## Create .venv: torch + torchvision pinned first, then the package (dev, deepspeed, cluster extras) held to them
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_PINS)
	printf '%s\n' $(TORCH_PINS) > $(VENV)/torch-constraints.txt
	$(VENV)/bin/pip install -q -c $(VENV)/torch-constraints.txt -e '.[dev,deepspeed,cluster]'

test: ## Run the test suite (end-to-end runs included), all but the long ones (make test-long)
	$(PY) -m pytest -q -m "not learning and not long"

test-fast: ## Run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

test-learning: ## The learning proof: pretrained twins (once per cache), 24K stage-2 samples, scores well above chance
	$(PY) -m pytest -q -s -m learning

test-long: ## The long end-to-end checks CI runs after `make test`: learning proof, table2, tracking server, 2-rank DDP/FSDP, pre-emption
	$(PY) -m pytest -q -s -m "learning or long"

lint: ## Ruff over the package, entry points and tests; import-linter's contracts (pyproject.toml) over src/lmm
	$(VENV)/bin/ruff check src tests train.py eval.py benchmarks scripts
	$(VENV)/bin/lint-imports

train: ## Train (default: tiny twin, both stages, synthetic data, CPU); ARGS="..." passes Hydra overrides
	$(PY) train.py $(ARGS)

train-row: ## Train one paper experiment: make train-row ROW=row7_gqa [ARGS="scale=paper"]
	$(PY) train.py +experiment=$(ROW) $(ARGS)

plan: ## Pre-flight plan of an experiment (memory, steps, FLOPs, time), offline: make plan [ROW=llava_v1_5_13b] [ARGS=...]
	$(PY) train.py +experiment=$(or $(ROW),llava_v1_5_7b) scale=paper plan=true $(ARGS)

resume: ## Continue an interrupted run with its own overrides, in its folder: make resume RUN=outputs/<run> [ARGS=...]
	$(PY) -m lmm.training.resume $(RUN) $(ARGS)

TABLE2 := row0_llava,row1_vqav2,row2_format_prompt,row3_mlp_connector,row4_okvqa_ocr,row5_region_vqa,row6_res336,row7_gqa,row8_sharegpt,row9_13b
table2: ## Table 2 rows 0-9: train (a shared stage 1 once: 4 for 10 rows), evaluate, report; ARGS="scale=paper ..." [REPORT=outputs/table2]
	$(PY) train.py -m +experiment=$(TABLE2) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS)
	$(PY) -m lmm.tracking.compare --latest --out $(or $(REPORT),outputs/table2)

# Table 2 in miniature (docs/table2_mini.md): every row x SEEDS with the pretrained twins, then a seed-vs-seed
# calibration run (one job at a time, beside them; T2M_CALIBRATION= skips it), then the report with 95 % intervals. JOBS row jobs at a time
# (hydra/launcher=local_pool), in row
# order (Hydra's product: the row outer, the seed inner), so rows 1-2, 4-5 and 7-8 mostly find their stage 1
# finished and reuse it.
SEEDS ?= 1,2,3
JOBS ?= $(shell nproc)
T2M_ROWS ?= $(TABLE2)
T2M_CALIBRATION ?= row2_format_prompt
T2M_CAL_JOBS ?= 1
T2M_OUT ?= outputs/table2_mini
ifndef T2M_RUNS
T2M_RUNS := $(T2M_OUT)/runs-$(shell date +%Y%m%d-%H%M%S)
endif
T2M_TRAIN = OMP_NUM_THREADS=$$(( $$(nproc) / $(JOBS) > 0 ? $$(nproc) / $(JOBS) : 1 )) $(PY) train.py -m hydra/launcher=local_pool \
	hydra.launcher.n_jobs=$(JOBS) +study=table2_mini
table2-mini: ## Table 2 in miniature: rows 0-9 x SEEDS (1,2,3) + calibration, report with 95 % intervals in outputs/table2_mini (hours on 2 cores)
	@start=$$(date +%s); mkdir -p $(T2M_RUNS); echo "table2-mini: $(T2M_RUNS) (calibration log: $(T2M_RUNS)/calibration.log)"; \
	calibration=; [ -z "$(T2M_CALIBRATION)" ] || { \
	$(T2M_TRAIN) +experiment=$(T2M_CALIBRATION) seed=$(SEEDS) training_seed_offset=100 hydra.launcher.n_jobs=$(T2M_CAL_JOBS) \
	  hydra.sweep.dir=$(T2M_RUNS)/calibration $(ARGS) > $(T2M_RUNS)/calibration.log 2>&1 & calibration=$$!; }; \
	$(T2M_TRAIN) +experiment=$(T2M_ROWS) seed=$(SEEDS) hydra.sweep.dir=$(T2M_RUNS)/rows $(ARGS) \
	  || echo "table2-mini: some row jobs failed (the report lists what is missing)"; \
	[ -z "$$calibration" ] || wait $$calibration || echo "table2-mini: a calibration job failed (the report lists what is missing)"; \
	echo "table2-mini: trained and evaluated in $$(( $$(date +%s) - start )) s"; \
	$(PY) -m lmm.tracking.table2_mini $(T2M_RUNS) --out $(T2M_OUT) $(REPORT_ARGS)

sweep-data: ## Fig. 4 data-efficiency sweep (subsample 0.1 … 1.0), one MLflow run per ratio; [LAUNCHER=local_parallel|slurm_7b] ARGS=...
	$(PY) train.py -m +sweep=data_efficiency +experiment=$(or $(EXP),llava_v1_5_7b) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS)

sweep-llm: ## Fig. 3 LLM-choice sweep (Vicuna v1.1/v1.3/v1.5, LLaMA-2-chat); [LAUNCHER=...] ARGS=...
	$(PY) train.py -m +sweep=llm_choice +experiment=$(or $(EXP),llava_v1_5_7b) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS)

synth: ## Build every synthetic twin once (training sources + 12 benchmarks) into the cache folder
	$(PY) -m lmm.synth $(ARGS)

shards: ## Convert LLaVA JSON to shards: make shards JSON=... IMAGES=... OUT=... [RULES=llava_mix665k]
	$(PY) -m lmm.data.shards --json $(JSON) --image-folder $(IMAGES) --out $(OUT) --source-rules $(or $(RULES),llava_mix665k) $(ARGS)

eval: ## Evaluate a checkpoint: make eval CKPT=outputs/<run> [ARGS="eval.benchmarks=[pope,gqa]"]
	$(PY) eval.py checkpoint=$(CKPT) $(ARGS)

ui: ## Serve the MLflow UI of the project's store (mlflow.db at the root; STORE=<URI> another) on 127.0.0.1 [PORT=5000]
	$(VENV)/bin/mlflow ui --backend-store-uri $(or $(STORE),sqlite:///$(CURDIR)/mlflow.db) --host 127.0.0.1 --port $(or $(PORT),5000)

tracking-server: ## MLflow server for concurrent jobs on 127.0.0.1: the project's store (DB=postgresql://... accepted), artifacts in mlartifacts/
	$(VENV)/bin/mlflow server --backend-store-uri $(or $(DB),sqlite:///$(CURDIR)/mlflow.db) \
		--artifacts-destination $(or $(ARTIFACTS),$(CURDIR)/mlartifacts) --host 127.0.0.1 --port $(or $(PORT),5000)

merge-runs: ## Copy old per-run stores (outputs/*/mlflow.db, multirun/*/mlflow.db) into the project's store
	$(PY) -m lmm.tracking.merge $(ARGS)

bench-gen: ## Benchmark the fast evaluation (batch 16, bf16) vs the official one (batch 1, fp16): answers/s, ratio, answers that differ
	$(PY) benchmarks/generation_benchmark.py

bench-train: ## Training step vs transformers' Llava, same weights and samples: useful tokens/s, ratio, peak memory; ARGS=...
	$(PY) benchmarks/train_step_benchmark.py $(ARGS)

bench-data: ## Benchmark the shard DataModule vs a LLaVA-style lazy JSON loader (samples/s, ratio)
	$(PY) benchmarks/loader_benchmark.py

rehearse-data: ## Full-size data rehearsal (558,128 + 665,298 records): convert, plan 8 ranks x 4 workers, one epoch; ARGS=...
	$(PY) benchmarks/data_rehearsal.py $(ARGS)

bench-gpu: ## One GPU: real-size step of a ~1B-LLM LLaVA (bf16, fp32 masters) — tokens/s, MFU; ARGS="--device cpu --toy" on CPU
	$(PY) benchmarks/gpu_step.py $(ARGS)

merge-lora: ## Merge a LoRA model folder into full weights: make merge-lora SRC=... DST=... [ARGS="--overwrite"]
	$(PY) -m lmm.models.checkpoint merge $(SRC) $(DST) $(ARGS)

export-hf: ## Export a model folder to the llava-hf layout: make export-hf MODEL=outputs/<run> OUT=... [ARGS="--overwrite"]
	$(PY) -m lmm.interop export $(MODEL) $(OUT) $(ARGS)

import-hf: ## Import a llava-hf folder (e.g. llava-1.5-7b-hf) as an lmm model folder: make import-hf HF=... OUT=... [ARGS=...]
	$(PY) -m lmm.interop import $(HF) $(OUT) $(ARGS)

score: ## Score a predictions file: make score BENCH=pope PRED=answers.jsonl ROOT=playground/data/eval
	$(PY) -m lmm.evaluation score $(BENCH) --predictions $(PRED) --data-root $(ROOT)

compare: ## Report + charts of the runs in the project's store (and older outputs/, multirun/ stores) beside the paper's numbers → outputs/compare/
	$(PY) -m lmm.tracking.compare $(ARGS)

clean: ## Remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
