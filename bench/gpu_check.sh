#!/usr/bin/env bash
# Everything this project checks on a GPU, as one run for a session lent the device (one
# H200, ~15 minutes of device time in all): about 5-8 minutes, 10.5 at most, each step under
# its own timeout so that one slow step cannot eat the rest. From the repository root:
#
#   bash bench/gpu_check.sh [WHEELS_DIR]
#
# 1. the `gpu` test tier: a QLoRA round and a bf16 LoRA round on the tiny model, each
#    adapter then served (tests/test_round_gpu.py);
# 2. our round against plain TRL defaults, tokens/s, same model shape and rows
#    (bench/train_throughput.py on a random SmolLM2-360M-shaped model; goal >= 1.5x);
# 3. peak memory of one QLoRA step on a random Llama-3.1-8B-shaped model at 2,048 tokens
#    (goal <= 10 GB);
# 4. the CUDA defaults the settings leave unmeasured: gradient checkpointing off vs on for
#    the same round, and (when liger-kernel is installed) Liger kernels on.
#
# The device image has torch (CUDA), transformers, peft and accelerate; it lacks trl,
# datasets, bitsandbytes and the app's own small dependencies and cannot download. Carry
# wheels for Python 3.12 made on this side, e.g.:
#   .venv/bin/python -m pip download -d shared/wheels --python-version 3.12 \
#     --platform manylinux2014_x86_64 --only-binary=:all: --no-deps \
#     -r bench/gpu-requirements.txt
# (64 MiB travel per call: check `du -sh shared/wheels` first.) Results: one line per step
# in $OUT/gpu_check.txt (or bench/gpu_check.txt), full logs beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GRADIO_ANALYTICS_ENABLED=False PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
RESULTS="${OUT:-bench}"
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/gpu_check.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME SECONDS COMMAND...: run it under a timeout, log it, record the outcome
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  say "$name: exit $rc after $((SECONDS - started)) s (log: $RESULTS/$name.log)"
  tail -n 4 "$RESULTS/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$SUMMARY"
if [ -n "${1:-}" ] && [ -d "$1" ]; then
  step wheels 90 "$PY" -m pip install -q --no-index --find-links "$1" \
    -r bench/gpu-requirements.txt
fi
"$PY" - <<'PYEOF' 2>&1 | tee -a "$SUMMARY"
import importlib.util as u
missing = [m for m in ("trl", "datasets", "bitsandbytes", "sqlmodel", "alembic", "typer",
                       "pydantic_settings", "datasketch", "phonenumbers", "stdnum",
                       "matplotlib", "argon2", "liger_kernel") if u.find_spec(m) is None]
print("missing modules:", ", ".join(missing) or "none")
PYEOF

# 1. The gpu tier (the fast tier's fixtures build the tiny model in a second).
step gpu_tests 150 "$PY" -m pytest tests/test_round_gpu.py -q -rs -p no:cacheprovider

# 2. Our round vs plain TRL defaults, on a random SmolLM2-360M-shaped model.
MODEL="$(mktemp -d)/smollm2-360m"
step random_model 45 "$PY" -m bench.random_model "$MODEL" --shape smollm2-360m
step throughput 120 "$PY" -m bench.train_throughput --model "$MODEL" --rows 64

# 3. Peak memory of one QLoRA step, Llama-3.1-8B shape, 2,048 tokens.
step qlora_8b 90 "$PY" -m bench.train_throughput --qlora-8b --seq-len 2048

# 4. Unmeasured CUDA defaults: each setting flipped, our round only (compare with step 2).
step ours_checkpointing 45 env TUNELOOP_GRADIENT_CHECKPOINTING=true \
  "$PY" -m bench.train_throughput --model "$MODEL" --rows 64 --ours-only
step ours_padding_free 45 env TUNELOOP_PADDING_FREE=true \
  "$PY" -m bench.train_throughput --model "$MODEL" --rows 64 --ours-only
if "$PY" -c "import liger_kernel" 2>/dev/null; then
  step ours_liger 45 env TUNELOOP_LIGER_KERNEL=true \
    "$PY" -m bench.train_throughput --model "$MODEL" --rows 64 --ours-only
fi
say "done in $SECONDS s"
