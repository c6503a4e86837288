"""What kind of machine a round trains on, and the choices that follow from it alone: rows a
training step, whether a 4-bit base saves memory that matters, DeepSpeed told it runs on a CPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Measured with bench/train_throughput.py on a 2-core CPU (SmolLM2-135M, LoRA r=16): DPO ran
# 1.3x faster per token at 2 rows a step than at 4 (SFT the same at 2 and 4; 1 is slower):
# the 49k-wide logits of a larger batch outgrow the caches. A GPU wants larger batches.
CPU_TRAIN_BATCH_SIZE = 2
GPU_TRAIN_BATCH_SIZE = 8


def default_train_batch_size() -> int:
    """Rows per training step when the settings name none: small on a CPU, larger on a GPU."""
    return GPU_TRAIN_BATCH_SIZE if on_cuda() else CPU_TRAIN_BATCH_SIZE


# QLoRA (a 4-bit NF4 base) stores ~0.56 bytes per parameter against bf16's 2, and costs
# speed: every matmul dequantises. The ~1.44 bytes/parameter it saves matter once the bf16
# weights crowd out what a step needs besides them (activations for batch 8 x 512 tokens,
# the evaluation's generation): auto turns it on when the bf16 base would fill more than this
# share of one GPU's memory (with FSDP / ZeRO-3, the share of one shard). A 24 GB card: from
# ~3B parameters (a 7-8B model gets QLoRA, SmolLM2 135M-1.7B trains in bf16); 80 GB: ~10B;
# an H200 (141 GB): ~17.6B. Reasoned from sizes, not yet measured on a GPU.
QLORA_WEIGHT_SHARE = 0.25


def qlora_saves_memory(parameters: int, gpu_bytes: int, shards: int = 1) -> bool:
    """Whether a bf16 base of `parameters` would take more than QLORA_WEIGHT_SHARE of a GPU
    with `gpu_bytes` of memory (its weights split over `shards` processes)."""
    return 2 * parameters / max(shards, 1) > QLORA_WEIGHT_SHARE * gpu_bytes


def count_parameters(model_dir: Path) -> int:
    """Parameters in a model directory's safetensors files, read from their headers only."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                total += math.prod(weights.get_slice(name).get_shape())
    return total


def on_cuda() -> bool:
    """Whether this process trains on a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


def deepspeed_on_cpu() -> None:
    """Tell DeepSpeed, where installed, that this process runs on the CPU: accelerate
    imports it to set up or unwrap a model, and left to guess it prints a warning on stdout,
    ahead of `tuneloop train --json`'s result."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
