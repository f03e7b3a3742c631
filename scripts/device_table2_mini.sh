#!/usr/bin/env bash
# `make table2-mini` on a lent GPU machine (one H200, 16 cores; docs/table2_mini.md "Results" records what it gave).
# The machine has PyTorch, Lightning and transformers but not Hydra, MLflow or WebDataset: those travel as wheels in
# .whl/ (pip download ... -d .whl), the pretrained twins (tokenizer, CLIP and Vicuna twins) in .t2m_cache/, built here
# by the same code (`python -c` of lmm.synth.world, see the docs). Everything else — the data and benchmark twins of
# each seed, both stages of every row, the evaluation — is made there. The job folders come back in $OUT (weights
# and checkpoints left out); the report is written again here, into the project's MLflow store.
#   run: bash scripts/device_table2_mini.sh   (env: JOBS=13 row jobs at a time, BUDGET=470 s for the runs;
#        GPU_STEP=1 then times benchmarks/gpu_step.py for GPU_STEP_BUDGET=100 s)
set -uo pipefail
OUT=${OUT:-/tmp/t2m-out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
export LMM_CACHE=$PWD/.t2m_cache MLFLOW_TRACKING_URI=sqlite:////tmp/t2m/mlflow.db PYTHONUNBUFFERED=1
mkdir -p /tmp/t2m "$OUT"
nvidia-smi -L; nproc
python3 -c "import torch, lightning, transformers, hydra, mlflow; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| lightning', lightning.__version__, '| transformers', transformers.__version__, '| hydra', hydra.__version__, '| mlflow', mlflow.__version__)" || exit 1
start=$(date +%s)
if command -v make > /dev/null; then
  timeout "${BUDGET:-470}" make -s table2-mini PY=python3 JOBS="${JOBS:-13}" T2M_CAL_JOBS=3 T2M_RUNS=/tmp/t2m/runs \
    T2M_OUT=/tmp/t2m/report REPORT_ARGS=--no-mlflow > /tmp/t2m/make.log 2>&1
else  # no make on the machine: the target's two sweeps, as `make -n table2-mini` prints them
  train() { python3 train.py -m hydra/launcher=local_pool +study=table2_mini "$@"; }
  rows=row0_llava,row1_vqav2,row2_format_prompt,row3_mlp_connector,row4_okvqa_ocr,row5_region_vqa,row6_res336,row7_gqa,row8_sharegpt,row9_13b
  export OMP_NUM_THREADS=1
  mkdir -p /tmp/t2m/runs
  timeout "${BUDGET:-470}" bash -c "$(declare -f train); \
    train +experiment=row7_gqa seed=1,2,3 training_seed_offset=100 hydra.launcher.n_jobs=3 \
      hydra.sweep.dir=/tmp/t2m/runs/calibration > /tmp/t2m/runs/calibration.log 2>&1 & \
    train +experiment=$rows seed=1,2,3 hydra.launcher.n_jobs=${JOBS:-13} hydra.sweep.dir=/tmp/t2m/runs/rows; wait" \
    > /tmp/t2m/make.log 2>&1
fi
echo "make table2-mini: exit $? after $(( $(date +%s) - start )) s"; pkill -f train.py; sleep 2; tail -25 /tmp/t2m/make.log
ls /tmp/t2m/runs/rows | wc -l; ls /tmp/t2m/runs/*/*/eval/*/per_question.json 2>/dev/null | wc -l
tar czf "$OUT/t2m_runs.tgz" -C /tmp/t2m --exclude='*.safetensors' --exclude='*.ckpt' --exclude='*.bin' \
  --exclude='*.pt' runs make.log $( [ -d /tmp/t2m/report ] && echo report )
ls -la "$OUT"
# Then, the machine to itself: the real-size stage-2 step (benchmarks/gpu_step.py; docs/performance.md).
if [ "${GPU_STEP:-1}" = 1 ]; then
  timeout -k 10 "${GPU_STEP_BUDGET:-100}" python3 benchmarks/gpu_step.py > "$OUT/gpu_step.log" 2>&1
  echo "gpu_step: exit $?"; tail -30 "$OUT/gpu_step.log"
fi
