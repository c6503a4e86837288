"""A round's held-out evaluation reuses what the same model computed on the same items before."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.tiny import add_pairs
from training.eval.evaluate import EvalSettings, evaluate_models

REPO_DATA = Path(__file__).resolve().parent.parent / "data"


def _spy(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Count the items each model (its active adapter, "base" before any) computes."""
    import training.eval.evaluate
    import training.eval.generate

    computed: Counter = Counter()
    real_logps, real_generate = (
        training.eval.evaluate.reply_logps,
        training.eval.generate.generate_replies,
    )

    def name(model: Any) -> str:
        return str(getattr(model, "active_adapter", "base"))

    def logps(model: Any, tokenizer: Any, items: list, **kw: Any) -> Any:
        computed[name(model)] += len(items)
        return real_logps(model, tokenizer, items, **kw)

    def generate(model: Any, tokenizer: Any, conversations: list, **kw: Any) -> Any:
        computed[name(model)] += len(conversations)
        return real_generate(model, tokenizer, conversations, **kw)

    monkeypatch.setattr(training.eval.evaluate, "reply_logps", logps)
    monkeypatch.setattr(training.eval.generate, "generate_replies", generate)
    return computed


def _rows() -> tuple[list[dict], list[dict]]:
    system = {"role": "system", "content": "You help with gardens."}
    sft = [
        {"messages": [system, {"role": "user", "content": f"How deep is bed {i}?"},
                      {"role": "assistant", "content": f"About {i + 20} cm."}]}
        for i in range(3)
    ]  # fmt: skip
    pairs = [
        {"prompt": [system, {"role": "user", "content": f"Water plant {i}?"}],
         "chosen": [{"role": "assistant", "content": "Yes, at dawn."}],
         "rejected": [{"role": "assistant", "content": "No idea."}]}
        for i in range(3)
    ]  # fmt: skip
    sft.append({"messages": [*pairs[0]["prompt"], *pairs[0]["chosen"]]})  # as eval_sft() adds
    return sft, pairs


def test_a_second_evaluation_of_the_same_models_computes_nothing_and_agrees(
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    computed = _spy(monkeypatch)
    sft, pairs = _rows()
    settings = EvalSettings(
        max_prompts=3, max_new_tokens=4, rubric_file=REPO_DATA / "rubric.json",
        general_file=REPO_DATA / "general_checks.jsonl", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    adapters = {"serving": tiny_adapters["v1"], "sft": tiny_adapters["v2"]}
    kw: dict[str, Any] = {"sft_rows": sft, "pairs": pairs, "settings": settings}
    first = evaluate_models(tiny_model_dir, adapters, **kw)
    # The bare base is the implicit rewards' reference only: its pairs, nothing else. The
    # pair's chosen reply is also a held-out SFT reply: computed once per model.
    assert computed["base"] == 2 * len(pairs)
    general = [json.loads(x) for x in (REPO_DATA / "general_checks.jsonl").open() if x.strip()]
    with_pattern = sum(1 for r in general if r.get("must_match"))
    once = 2 * len(pairs) + (len(sft) - 1) + len(general) + 3 + with_pattern
    assert computed["serving"] == computed["sft"] == once

    computed.clear()
    again = evaluate_models(tiny_model_dir, adapters, **kw)
    assert sum(computed.values()) == 0
    assert again == first

    # A new adapter is computed; the others come from the cache. Without a cache folder,
    # the same numbers (batches of other rows: equal up to rounding).
    computed.clear()
    swapped = evaluate_models(tiny_model_dir, {"serving": tiny_adapters["v2"]}, **kw)
    assert sum(computed.values()) == 0 and swapped["serving"] == first["sft"]
    fresh = evaluate_models(
        tiny_model_dir, adapters, **{**kw, "settings": EvalSettings(**{
            **settings.__dict__, "cache_dir": None})},
    )  # fmt: skip
    for name in adapters:
        assert fresh[name]["heldout_loss"] == pytest.approx(first[name]["heldout_loss"], 1e-5)
        assert fresh[name]["items"]["rubric_pass"] == first[name]["items"]["rubric_pass"]
        assert fresh[name]["pref_acc"] == first[name]["pref_acc"]


def test_a_round_after_a_round_evaluates_only_its_new_stages(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`tuneloop train` twice on the same feedback: the second round's serving version (the
    first round's promoted stage, or the base) and the base come from the eval cache."""
    from feedback.store import Store
    from tests.cli import run_cli

    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_TRACKER", "none")
    monkeypatch.setenv("TUNELOOP_TRAIN_MAX_STEPS", "1")
    monkeypatch.setenv("TUNELOOP_EVAL_MAX_PROMPTS", "2")
    monkeypatch.setenv("TUNELOOP_EVAL_MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("TUNELOOP_ROUND_MODE", "fresh")  # the same rows again
    Settings().home.mkdir(parents=True)
    add_pairs(Store.open(Settings().database), 12, prompt="How do I bake bread number {i}?")
    computed = _spy(monkeypatch)

    code, out, err = run_cli(monkeypatch, capsys, "train", "--json")
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert first["gate"] and all(computed[stage] > 0 for stage in first["gate"]), computed
    computed.clear()
    code, out, err = run_cli(monkeypatch, capsys, "train", "--json")
    assert code == 0, err
    second = json.loads(out.strip().splitlines()[-1])
    assert computed["serving"] == 0 and computed["base"] == 0, computed
    assert second["serving_before"] == first["serving_after"]
    assert (Settings().home / "eval-cache").is_dir()
