"""A short training round on the real embedded SmolLM2 (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.config import Settings
from feedback.records import NewPreference
from feedback.store import Store
from training.registry import Registry
from training.round import run_round
from training.round_config import RoundConfig

pytestmark = pytest.mark.slow

CUSTOMERS = ["Dana", "Omar", "Priya", "Lena", "Marco", "Aiko", "Sven", "Fatima", "Jonas", "Rosa"]
ISSUES = [
    ("my internet has been down since this morning", "a credit is added after 4 hours (POL-3)"),
    ("I was charged twice this month", "disputes can be raised within 60 days (POL-12)"),
    ("can you move my line", "we need 14 days' notice; one move a year is free (POL-15)"),
]  # fmt: skip


def test_short_round_on_smollm2(smollm2_dir: Path) -> None:
    settings = Settings()
    store = Store.open(settings.database)
    pairs = []
    for name in CUSTOMERS:
        for issue, policy in ISSUES:
            prompt = [{"role": "user", "content": f"Hi, I'm {name}: {issue}. What now?"}]
            good = f"Hi {name}, sorry about that: {policy}.\n\n— Brightwater Support"
            pairs.append(NewPreference(prompt=prompt, chosen=good, rejected="Please call us."))
    store.add_bulk(preferences=pairs)
    model_dir = smollm2_dir
    config = RoundConfig.from_settings(settings, sft_steps=2, dpo_steps=2)
    config.batch_size = 2
    config.max_length = 384
    # No replay: its 30 answers from the bare base are ~6 s of generation on 2 cores for
    # a round this short; that they come from the bare base and join SFT only is
    # test_round.py's subject, on the tiny model.
    config.replay_file = None
    config.eval = type(config.eval)(
        **{
            **config.eval.__dict__,
            "max_prompts": 2,
            "max_new_tokens": 24,
            "general_max_new_tokens": 8,
        }
    )
    registry = Registry(settings.adapters_dir)

    result = run_round(
        store=store,
        registry=registry,
        model_dir=model_dir,
        config=config,
        rounds_dir=settings.rounds_dir,
    )

    # Known in advance: the objective (the held-out replies' rubric) is scored on the 2
    # prompts asked for, fewer than the gate's MIN_ITEMS, so it can never be shown better;
    # 2 steps at the default rate move the general checks far less than their margins.
    # A `rejected` here would mean 2 steps broke the model: a finding, not noise.
    assert result.status == "inconclusive", result.reasons
    assert set(result.gate) == {"sft", "dpo"}  # every stage was gated
    assert all("on 2 items" in reason and "unsure" in reason for reason in result.reasons)
    assert result.version is not None and registry.current() is None
    registry.verify(result.version)
    snap = json.loads((settings.rounds_dir / result.id / "snapshot.json").read_text())
    assert snap["counts"]["dpo_heldout"] >= 1 and snap["seed_rows"] == 6
    assert snap["curation"]["pii"].get("name", 0) > 0  # customer names were pseudonymised
    for stage in ("serving", "sft", "dpo"):
        metrics = result.metrics[stage]
        for key in ("heldout_loss", "pref_acc", "general_loss", "rubric_pass"):
            assert metrics[key] is not None and math.isfinite(metrics[key]), (stage, key)
    # The candidate loads for generation like any registered version.
    from training.eval.generate import generate_replies, load_for_generation

    model, tok = load_for_generation(model_dir, Path(registry.path(result.version)))
    reply = generate_replies(model, tok, [[{"role": "user", "content": "Hi"}]], max_new_tokens=8)
    assert reply[0].strip()
