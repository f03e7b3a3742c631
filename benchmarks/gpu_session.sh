#!/usr/bin/env bash
# The GPU session: how the GPU figures in docs were produced, on one lent GPU machine without internet
# (Python 3.12, torch, lightning, transformers, timm, peft; no hydra, omegaconf, mlflow, DeepSpeed).
#
#   bash benchmarks/gpu_session.sh     # in the repository root; logs and summary.txt go to $OUT
#
# 1. What the machine lacks and these checks import, from ./.whl (ignored; travels with `carry: [".whl"]`),
#    into /tmp/site: omegaconf + antlr4-python3-runtime (gpu_step.py and gpu_deepspeed.py read conf/ with
#    OmegaConf); DeepSpeed 0.19.8, an sdist built there with DS_BUILD_OPS=0 (no compiled ops), and its missing
#    requirements pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions, hjson;
#    protobuf (transformers 5 needs it to read the SentencePiece tokenizer that generation_benchmark.py
#    trains). setuptools (.whl/build/) serves the DeepSpeed build only; if that build fails, .whl/fallback/
#    holds the same DeepSpeed built as a wheel on a CPU machine. lmm runs from src/ (PYTHONPATH), not
#    installed. To refill .whl:
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_17_x86_64 -d .whl omegaconf==2.3.1 pydantic==2.14.4 pydantic-core==2.50.5 \
#        annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 hjson==3.1.0 \
#        protobuf==7.36.2
#      python3 -m pip download --no-deps --only-binary=:all: -d .whl/build setuptools==84.2.1
#      python3 -m pip download --no-deps --no-binary :all: -d .whl deepspeed==0.19.8 \
#        antlr4-python3-runtime==4.9.3
#      pip wheel --no-deps -w .whl .whl/antlr4-python3-runtime-4.9.3.tar.gz  # no wheel on PyPI; then rm it
#      DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation -w .whl/fallback .whl/deepspeed-0.19.8.tar.gz
# 2. Three checks, each under its own `timeout`, its output in $OUT/<name>.log, each run whatever the last
#    one did:
#    gpu_step       benchmarks/gpu_step.py: real size (CLIP ViT-L/14-336 + TinyLlama-1.1B), 8 x 2048 tokens
#    gpu_deepspeed  benchmarks/gpu_step.py --deepspeed: accumulation + checkpoint checks under ZeRO-2;
#                   Lightning starts one process (NCCL, world size 1), so one GPU suffices
#    generation     benchmarks/generation_benchmark.py: it has no device flag, so CPU and a random tiny
#                   twin; here it checks the evaluation path on this machine's torch / transformers
# 3. A summary: each step's exit status and seconds, the result lines, the end of each failed log.
#
# Knobs for a dry run elsewhere: PY (python3), SITE (/tmp/site), SKIP_INSTALL=1, STEP_ARGS (more gpu_step.py
# arguments, e.g. "--device cpu --toy"), GEN_ARGS (generation_benchmark.py's, "--threads 8"), timeouts in s:
# T_INSTALL (100), T_STEP (120), T_DEEPSPEED (180), T_GENERATION (60).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d /tmp/gpu-session-XXXX)}
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
BUILD_TOOLS=/tmp/build-tools
STEP_ARGS=${STEP_ARGS:-}
GEN_ARGS=${GEN_ARGS:---threads 8}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
export LMM_CACHE=/tmp/lmm-cache  # the tiny tokenizer of generation_benchmark.py
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
FAILED=()

# run NAME SECONDS CMD...: CMD under `timeout`, output shown and kept in $OUT/NAME.log; a line in the summary.
run() {
  local name=$1 limit=$2 t0 rc
  shift 2
  echo "=== $name (timeout ${limit} s): $*"
  t0=$(date +%s)
  timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$name: rc $rc$([ "$rc" = 124 ] && echo ' (timed out)') in $(($(date +%s) - t0)) s" | tee -a "$SUMMARY"
  [ "$rc" = 0 ] || FAILED+=("$name")
  return "$rc"
}

install() {
  local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)
  "${pip[@]}" --target "$SITE" .whl/*.whl || return
  "${pip[@]}" --target "$BUILD_TOOLS" .whl/build/*.whl || return
  if ! DS_BUILD_OPS=0 PYTHONPATH="$BUILD_TOOLS:$SITE" "${pip[@]}" --no-build-isolation --target "$SITE" \
      .whl/deepspeed-0.19.8.tar.gz; then
    echo "DeepSpeed's sdist did not build here: installing .whl/fallback (built on a CPU machine)"
    "${pip[@]}" --target "$SITE" .whl/fallback/deepspeed-*.whl || return
  fi
}

export PY SITE BUILD_TOOLS
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  export -f install
  run install "${T_INSTALL:-100}" bash -c install
fi
export PYTHONPATH=$SITE:$PWD/src
# torch.utils.cpp_extension (DeepSpeed imports it) imports setuptools: the build's copy if none is here
"$PY" -c "import setuptools" 2>/dev/null || PYTHONPATH=$PYTHONPATH:$BUILD_TOOLS

versions() {
  "$PY" - <<'EOF'
import sys, torch, lightning, transformers, omegaconf, pydantic
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("lightning", lightning.__version__, "| transformers", transformers.__version__, "| omegaconf",
      omegaconf.__version__, "| pydantic", pydantic.__version__)
import deepspeed
print("deepspeed", deepspeed.__version__, "from", deepspeed.__file__)
import lmm
print("lmm from", lmm.__file__)
EOF
  local rc=$?
  nvidia-smi -L || echo "nvidia-smi: none"
  return "$rc"
}
export -f versions
run versions 60 bash -c versions

# shellcheck disable=SC2086  # STEP_ARGS is a word list
run gpu_step "${T_STEP:-120}" "$PY" benchmarks/gpu_step.py $STEP_ARGS
# shellcheck disable=SC2086
run gpu_deepspeed "${T_DEEPSPEED:-180}" "$PY" benchmarks/gpu_step.py --deepspeed $STEP_ARGS
# shellcheck disable=SC2086
run generation "${T_GENERATION:-60}" "$PY" benchmarks/generation_benchmark.py $GEN_ARGS

{
  echo
  echo "--- results"
  grep -hE "^(python|lightning|deepspeed [0-9]|GPU [0-9])" "$OUT/versions.log"
  grep -hE "^(device|model|batch|step time|tokens/s|TFLOP/s|MFU|peak memory|fp32 masters)" "$OUT/gpu_step.log"
  grep -hE "^(device|deepspeed (accumulation|checkpoint))" "$OUT/gpu_deepspeed.log"
  grep -hE "answers/s|^ratio" "$OUT/generation.log"
  for name in "${FAILED[@]}"; do  # the last lines of each failed check
    echo "--- $name failed; its log ends:"
    tail -5 "$OUT/$name.log"
  done
} >> "$SUMMARY" 2>/dev/null
echo
echo "=== summary ($SUMMARY)"
cat "$SUMMARY"
