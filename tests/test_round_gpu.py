"""A QLoRA round on CUDA (4-bit NF4 base, bf16): skipped on machines without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.config import REPO_DATA_DIR, Settings
from feedback.records import NewExample, NewPreference
from feedback.store import Store
from training.evaluate import EvalSettings
from training.registry import Registry
from training.round import RoundConfig, run_round

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="QLoRA needs bitsandbytes"
)
def test_qlora_round_on_cuda(tiny_model_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from training.stages import load_base

    settings = Settings()
    store = Store.open(settings.database)
    prompts = [f"How do I care for {t}?" for t in ("tomatoes", "bread", "soup", "a spider")]
    prompts += [f"Tell me about {t}, please." for t in ("tomatoes", "bread", "soup", "a spider")]
    prompts += [f"Any quick tips on {t}?" for t in ("tomatoes", "bread", "soup", "a spider")]
    # Each prompt its own reply: a train row repeating a held-out answer is not trained on.
    replies = [f"A good answer is short and polite, {i}. Thank you." for i in range(len(prompts))]
    store.add_bulk(
        preferences=[
            NewPreference(prompt=[{"role": "user", "content": p}], chosen=r, rejected="no")
            for p, r in zip(prompts, replies, strict=True)
        ],
        examples=[
            NewExample(
                messages=[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            )
            for p, r in zip(prompts, replies, strict=True)
        ],
    )
    config = RoundConfig(
        sft_steps=3, dpo_steps=3, sft_learning_rate=5e-3, dpo_learning_rate=5e-3,
        eval=EvalSettings(max_prompts=2, max_new_tokens=4,
                          general_file=REPO_DATA_DIR / "general_checks.jsonl"),
    )  # fmt: skip
    assert config.qlora
    base = load_base(tiny_model_dir, config)
    assert getattr(base, "is_loaded_in_4bit", False), "CUDA training must load the base 4-bit"
    del base
    torch.cuda.empty_cache()

    result = run_round(
        store=store,
        registry=Registry(settings.adapters_dir),
        model_dir=tiny_model_dir,
        config=config,
        rounds_dir=settings.home / "rounds",
    )
    assert result.status in ("promoted", "rejected"), result.reasons
    folder = settings.home / "rounds" / result.id
    weights = load_file(str(folder / "dpo" / "adapter" / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
