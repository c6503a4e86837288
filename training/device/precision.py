"""Which number format a round trains in, and a model answers in.

A GPU trains in bf16. A CPU trains in bf16 only where it has bf16 instructions
(AVX512-BF16 or AMX); without them every bf16 matmul is emulated and training slows
instead. With them, autocast runs the matmuls in bf16 and keeps the LoRA weights, the
optimizer and the loss in fp32. Answering (the chat, batch generation, a round's replay
and evaluation) follows the same CPU rule with its own setting, so a chat reply and the
gate's reply to the same prompt come from the same numbers.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

# Linux /proc/cpuinfo flags of the x86 instructions that multiply bf16 natively.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags named on /proc/cpuinfo's `flags` lines."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


@cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 natively (False where it cannot be told)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(cpu_flags(text) & BF16_CPU_FLAGS)


def train_in_bf16(setting: bool | None, cuda: bool, launched: bool = False) -> bool:
    """The setting where given; unset: on a GPU, and on a CPU with bf16 instructions in a
    round of one process. Several CPU processes (gloo, DeepSpeed on the CPU) stay in fp32:
    a DeepSpeed ZeRO-2 round on two CPU processes aborted at its end in bf16, and the
    launchers' CPU configs say `--mixed_precision no`."""
    if setting is not None:
        return setting
    return cuda or (not launched and cpu_has_bf16())


def inference_dtype(setting: bool | None, cuda: bool | None = None) -> str:
    """The dtype a model is loaded in to answer (chat, batch generation, a round's replay
    and evaluation): "bfloat16" or "float32" where the setting says; unset: on a CPU,
    bf16 where it has bf16 instructions (greedy replies to ~370-token prompts took half
    the time on SmolLM2, measured by hand; `bench.generate --precisions fp32,bf16` times
    it) and fp32 elsewhere, on a GPU the checkpoint's own
    dtype ("auto"). `cuda` None: whether torch sees a GPU here."""
    if setting is not None:
        return "bfloat16" if setting else "float32"
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return "auto"
    return "bfloat16" if cpu_has_bf16() else "float32"
