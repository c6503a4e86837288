"""The models a training stage starts from: the base (in the precision and on the devices
the round chose), its tokenizer, and the LoRA adapter it trains (a fresh one or a copy
of an earlier adapter)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from training.device import ranks
from training.device.fused_head import score_only_labels
from training.device.machine import deepspeed_on_cpu, on_cuda
from training.device.shared_prefix import share_prefix
from training.lora import lora_config
from training.round_config import RoundConfig

logger = logging.getLogger(__name__)


def base_load_kwargs(config: RoundConfig, *, cuda: bool) -> dict[str, Any]:
    """`from_pretrained` arguments for the training base: on CPU fp32, or bf16 where the
    round trains in bf16 (autocast would otherwise cast every frozen weight again on every
    forward pass; the LoRA weights stay fp32); on CUDA bf16, each process on its own GPU,
    4-bit NF4 with QLoRA. Under FSDP / ZeRO-3 the launcher places the weights, and the 4-bit
    ones are stored as bf16 so that they can be sharded."""
    import torch

    if not cuda:
        return {"dtype": torch.bfloat16 if config.bf16 else torch.float32}
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    sharded = ranks.sharded()
    if not sharded:
        kwargs["device_map"] = {"": ranks.local_rank()}
    if config.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_storage=torch.bfloat16 if sharded else torch.uint8,
        )
    return kwargs


def load_base(model_dir: Path, config: RoundConfig) -> Any:
    """The base model for training (see base_load_kwargs); `config` as resolved()."""
    from transformers import AutoModelForCausalLM

    cuda = on_cuda()
    if not cuda:
        deepspeed_on_cpu()
    model = AutoModelForCausalLM.from_pretrained(model_dir, **base_load_kwargs(config, cuda=cuda))
    if not cuda:
        logger.info(
            "training on the CPU in %s",
            "bf16 (TUNELOOP_TRAIN_BF16; the LoRA weights in fp32)" if config.bf16 else "fp32",
        )
        return model
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(config.gradient_checkpointing)
        )
    return model


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer, with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trainable(model_dir: Path, config: RoundConfig, adapter: Path | None) -> tuple[Any, Any]:
    """(model, peft_config) for a trainer: the base with `adapter` loaded trainable (its own
    LoRA shape), or the bare base and a fresh LoRA config from the settings."""
    base = load_base(model_dir, config)
    if config.share_prefix and not ranks.sharded():  # sharded weights: the plain forward
        share_prefix(base)
    score_only_labels()  # a CPU projects only the trained positions, as a GPU does
    if adapter is not None:
        from peft import LoraConfig, PeftModel

        # The adapter keeps its own shape; dropout is a training choice, this round's.
        saved = LoraConfig.from_pretrained(str(adapter))
        saved.lora_dropout = config.lora_dropout
        model = PeftModel.from_pretrained(base, str(adapter), config=saved, is_trainable=True)
        return model, None
    return base, lora_config(
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_targets,
    )
