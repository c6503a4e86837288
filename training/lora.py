"""The one LoRA configuration helper: every adapter a round trains is built from it."""

from __future__ import annotations

from typing import Any


def lora_config(
    *, r: int, alpha: int, dropout: float, target_modules: str | list[str] = "all-linear"
) -> Any:
    """A causal-LM `peft.LoraConfig` from our settings.

    `target_modules` is "all-linear" or a comma-separated list / list of module names.
    """
    from peft import LoraConfig

    targets: str | list[str] = target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
