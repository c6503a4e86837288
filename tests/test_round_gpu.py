"""Rounds on CUDA: a QLoRA round (4-bit NF4 base) and a bf16 LoRA round on the tiny model,
each adapter then served by the serving engine `tuneloop serve` runs. Skipped (with the
reason) on machines without a GPU; bench/gpu_check.sh runs them on a lent one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.config import REPO_DATA_DIR, Settings
from feedback.records import NewExample, NewPreference
from feedback.store import Store
from tests.configs import round_config
from training.eval.evaluate import EvalSettings
from training.gate import GateConfig, parse_margins
from training.registry import Registry
from training.round import run_round

pytestmark = pytest.mark.gpu
# A margin no candidate can meet (99 nats better on the held-out loss): the round is
# rejected, whatever the 3 steps did. The subject here is CUDA training and serving, not the
# verdict, and the adapter is made current by hand below.
NEVER = GateConfig(margins=parse_margins("heldout_loss=99"), min_items=2)


def _feedback(store: Store) -> None:
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


@pytest.mark.parametrize(
    "qlora",
    [
        pytest.param(
            True,
            id="qlora",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("bitsandbytes") is None,
                reason="QLoRA needs bitsandbytes (the `gpu` extra .ci/setup installs)",
            ),
        ),
        pytest.param(False, id="bf16-lora"),
    ],
)
def test_a_round_on_cuda_then_its_adapter_served(tiny_model_dir: Path, qlora: bool) -> None:
    import torch
    from safetensors.torch import load_file

    from app.serving.engine import ChatEngine, SamplingParams
    from training.models import load_base
    from training.round_config import resolved

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database)
    _feedback(store)
    config = round_config(
        sft_steps=3, dpo_steps=3, sft_learning_rate=5e-3, dpo_learning_rate=5e-3, qlora=qlora,
        serve_in_4bit=qlora,
        eval=EvalSettings(max_prompts=2, max_new_tokens=4,
                          general_file=REPO_DATA_DIR / "general_checks.jsonl"),
        gate=NEVER,
    )  # fmt: skip
    base = load_base(tiny_model_dir, resolved(config, tiny_model_dir))
    assert bool(getattr(base, "is_loaded_in_4bit", False)) is qlora
    assert base.device.type == "cuda"
    if not qlora:
        assert base.dtype == torch.bfloat16
    del base
    torch.cuda.empty_cache()

    registry = Registry(settings.adapters_dir)
    result = run_round(
        store=store,
        registry=registry,
        model_dir=tiny_model_dir,
        config=config,
        rounds_dir=settings.rounds_dir,
        promote=False,
    )
    assert result.status == "rejected" and result.decision == "reject", result.reasons
    assert result.version
    folder = settings.rounds_dir / result.id
    weights = load_file(str(folder / "dpo" / "adapter" / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert all(torch.isfinite(t.float()).all() for t in weights.values())

    registry.set_current(result.version)
    engine = ChatEngine(tiny_model_dir, registry, context_tokens=256, load_in_4bit=qlora)
    try:
        info = engine.generate(
            [{"role": "user", "content": "How do I care for bread?"}],
            SamplingParams(max_new_tokens=8, temperature=0),
        )
    finally:
        engine.close()
    assert info.adapter_version == result.version and info.new_tokens > 0
