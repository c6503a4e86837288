#!/usr/bin/env bash
# Everything this project checks on a GPU, as one run for a session lent the device (one
# H200, 15 minutes of device time in all, start-up included): under 8 minutes, each step
# under its own timeout so that one slow step cannot eat the rest.
#
# 1. the `gpu` test tier: a QLoRA round and a bf16 LoRA round on the tiny model, each
#    adapter then served (tests/test_round_gpu.py), and the vLLM backend's tests
#    (tests/test_vllm.py: they skip when vllm is not installed, see below);
# 2. our round against plain TRL defaults, tokens/s, same model shape and rows
#    (bench/train_throughput.py on a random SmolLM2-360M-shaped model; goal >= 1.5x);
# 3. peak memory of one QLoRA step on a random Llama-3.1-8B-shaped model at 2,048 tokens
#    (goal <= 10 GB);
# 4. while time is left: the CUDA defaults the settings leave unmeasured, each flipped for
#    our round (gradient checkpointing on, padding-free SFT, Liger kernels if installed).
#
# How the lead runs it (the device machine gets the checkout the session started in, i.e.
# the lead's, plus the paths named in `carry`, 64 MiB in all; it reaches no package index):
#   here, once, from that checkout's root:
#     .venv/bin/python -m bench.gpu_wheels       # -> .whl/ (git-ignored), ~35 MiB
#   then the device tool's run, with
#     command: bash bench/gpu_check.sh .whl
#     carry:   [".whl"]
#     timeout_s: 540
#   and read the figures in the reply's output_tail; every step's full log comes back in
#   $OUT (gpu_check.txt, one line per step, and STEP.log beside it: 8 files at most).
#
# The device image has Python 3.12 with torch 2.11 (CUDA 13), accelerate, peft, an older
# transformers, pytest, numpy, pandas and matplotlib; .whl holds the rest
# (bench/gpu-requirements.txt), installed into /tmp/site and put first on PYTHONPATH.
# vLLM cannot be among them: its CUDA wheel alone is far over what one call carries, so the
# vLLM gpu tests report a skip there unless an image has vllm installed.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
RESULTS="${OUT:-bench/results}"
mkdir -p "$RESULTS"
# the benchmarks' own JSON results (bench/record.py) go beside the step logs
export TUNELOOP_BENCH_RESULTS="$RESULTS"
SUMMARY="$RESULTS/gpu_check.txt"
: > "$SUMMARY"
# Optional steps start only while they can end by then (seconds since the start).
BUDGET="${GPU_CHECK_BUDGET:-450}"
say() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME SECONDS COMMAND...: run it under a timeout, log it, record the outcome
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  say "$name: exit $rc after $((SECONDS - started)) s (log: $name.log)"
  tail -n 6 "$RESULTS/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
}
optional() {  # optional NAME SECONDS COMMAND...: a step, when it fits in what is left
  if [ $((SECONDS + $2)) -gt "$BUDGET" ]; then
    say "$1: not run (${SECONDS} s gone of ${BUDGET} s)"
    return
  fi
  step "$@"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$SUMMARY"
if [ -n "${1:-}" ]; then
  [ -d "$1" ] || { say "no wheels folder $1 (make it with: python -m bench.gpu_wheels)"; exit 2; }
  # --no-deps: bench/gpu-requirements.txt names every dependency the image lacks.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$1"/*.whl > /tmp/wheels.log 2>&1 \
    || { say "wheels: install failed"; tail -n 20 /tmp/wheels.log | tee -a "$SUMMARY"; exit 2; }
  export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF' 2>&1 | tee -a "$SUMMARY"
import importlib.util as u
missing = [m for m in ("trl", "datasets", "bitsandbytes", "sqlmodel", "alembic", "typer",
                       "pydantic_settings", "datasketch", "phonenumbers", "stdnum",
                       "matplotlib", "argon2", "krippendorff", "vllm", "liger_kernel")
           if u.find_spec(m) is None]
print("missing modules:", ", ".join(missing) or "none")
import torch, transformers, peft, trl
print("versions: torch", torch.__version__, "transformers", transformers.__version__,
      "peft", peft.__version__, "trl", trl.__version__)
PYEOF

# 1. The gpu tier (the fast tier's fixtures build the tiny model in a second).
step gpu_tests 180 "$PY" -m pytest tests/test_round_gpu.py tests/test_vllm.py -m gpu -q -rs \
  -p no:cacheprovider

# 2. Our round vs plain TRL defaults, on a random SmolLM2-360M-shaped model.
MODEL="$(mktemp -d)/smollm2-360m"
step random_model 45 "$PY" -m bench.random_model "$MODEL" --shape smollm2-360m
step throughput 120 "$PY" -m bench.train_throughput --model "$MODEL" --rows 64

# 3. Peak memory of one QLoRA step, Llama-3.1-8B shape, 2,048 tokens.
step qlora_8b 90 "$PY" -m bench.train_throughput --qlora-8b --seq-len 2048

# 4. Unmeasured CUDA defaults: each setting flipped, our round only (compare with step 2).
optional ours_checkpointing 45 env TUNELOOP_GRADIENT_CHECKPOINTING=true \
  "$PY" -m bench.train_throughput --model "$MODEL" --rows 64 --ours-only
optional ours_padding_free 45 env TUNELOOP_PADDING_FREE=true \
  "$PY" -m bench.train_throughput --model "$MODEL" --rows 64 --ours-only
if "$PY" -c "import liger_kernel" 2>/dev/null; then
  optional ours_liger 45 env TUNELOOP_LIGER_KERNEL=true \
    "$PY" -m bench.train_throughput --model "$MODEL" --rows 64 --ours-only
fi
say "done in $SECONDS s"
