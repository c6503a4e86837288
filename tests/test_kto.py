"""Unpaired 👍/👎 feedback: `tuneloop export kto` rows, the class weights, and a round whose
store holds only thumbs training a KTO stage that the gate decides on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.configs import round_config
from training.trainer_args import KTO_WEIGHT_RATIO, kto_weights


def _reply(store: Any, user_id: int, question: str, answer: str, kind: str = "reply") -> int:
    conversation = store.start_conversation(user_id=user_id, title=question)
    store.add_user_message(conversation_id=conversation, content=question)
    return store.add_response(
        conversation_id=conversation,
        prompt=[{"role": "user", "content": question}],
        content=answer,
        model="tiny",
        adapter_version=None,
        params={},
        latency_ms=1.0,
        kind=kind,
    )


def test_export_kto_writes_unpaired_thumbs_once_with_their_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from app.config import Settings
    from feedback.store import Store

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database)
    ann = store.add_user(name="ann", role="expert", password="pw").id
    bob = store.add_user(name="bob", role="expert", password="pw").id

    liked = _reply(store, ann, "How deep do tomatoes root?", "About a metre.")
    store.rate(response_id=liked, user_id=ann, up=True)
    store.rate(response_id=liked, user_id=bob, up=True)  # two 👍: still one row
    disliked = _reply(store, ann, "When is bread done?", "Whenever.")
    store.rate(response_id=disliked, user_id=ann, up=False, reason="no test for doneness")
    changed = _reply(store, ann, "Oil a chain how often?", "Never.")
    store.rate(response_id=changed, user_id=ann, up=False)
    store.rate(response_id=changed, user_id=ann, up=True)  # the latest click counts
    corrected = _reply(store, ann, "How long is soup cooked?", "An hour.")
    store.rate(response_id=corrected, user_id=ann, up=False)
    store.correct(response_id=corrected, user_id=ann, content="Twenty minutes.")
    split = _reply(store, ann, "How many legs has a spider?", "Six.")
    store.rate(response_id=split, user_id=ann, up=False)
    store.rate(response_id=split, user_id=bob, up=True)  # raters disagree: left out
    original = _reply(store, ann, "Will it rain?", "Yes, grey sky and cold wind.")
    candidate = _reply(store, ann, "Will it rain?", "Maybe.", kind="candidate")
    picked = store.add_comparison(
        user_id=ann, original_response_id=original, candidate_response_id=candidate,
        original_is_a=True,
    )  # fmt: skip
    store.decide_comparison(comparison_id=picked, user_id=ann, choice="A")
    store.rate(response_id=original, user_id=ann, up=True)  # the pair already trains it
    tied = _reply(store, ann, "Is basil easy?", "Yes, with sun.")
    tied_candidate = _reply(store, ann, "Is basil easy?", "Yes.", kind="candidate")
    tie = store.add_comparison(
        user_id=ann, original_response_id=tied, candidate_response_id=tied_candidate,
        original_is_a=True,
    )  # fmt: skip
    store.decide_comparison(comparison_id=tie, user_id=ann, choice="tie")
    store.rate(response_id=tied_candidate, user_id=ann, up=False)  # a tie is no pair

    out = tmp_path / "kto.jsonl"
    code, stdout, err = run_cli(monkeypatch, capsys, "export", "kto", "--out", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout) == {
        "kind": "kto", "split": "all", "rows": 4, "out": str(out), "pii": "scrubbed"
    }  # fmt: skip
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_prompt = {r["prompt"][-1]["content"]: r for r in rows}
    assert {q: r["label"] for q, r in by_prompt.items()} == {
        "How deep do tomatoes root?": True,
        "When is bread done?": False,
        "Oil a chain how often?": True,
        "Is basil easy?": False,
    }
    assert by_prompt["When is bread done?"] == {
        "prompt": [{"role": "user", "content": "When is bread done?"}],
        "completion": [{"role": "assistant", "content": "Whenever."}],
        "label": False,
        "reasons": ["no test for doneness"],
    }
    assert all(set(r) == {"prompt", "completion", "label"} for r in rows if r["label"])

    # The splits partition the rows, by the round's plan.
    parts = {}
    for split in ("train", "heldout"):
        path = tmp_path / f"kto-{split}.jsonl"
        code, _, err = run_cli(
            monkeypatch, capsys, "export", "kto", "--out", str(path), "--split", split
        )
        assert code == 0, err
        parts[split] = path.read_text(encoding="utf-8").splitlines()
    assert sorted(parts["train"] + parts["heldout"]) == sorted(
        out.read_text(encoding="utf-8").splitlines()
    )


@pytest.mark.parametrize(
    ("desirable", "undesirable"), [(10, 10), (12, 10), (40, 10), (10, 40), (1, 99), (7, 3)]
)
def test_kto_weights_put_the_class_ratio_in_trls_range(desirable: int, undesirable: int) -> None:
    d_weight, u_weight = kto_weights(desirable, undesirable)
    ratio = d_weight * desirable / (u_weight * undesirable)
    low, high = KTO_WEIGHT_RATIO
    assert low <= ratio <= high, (desirable, undesirable, d_weight, u_weight)
    assert min(d_weight, u_weight) == 1.0  # only the scarcer class is weighed up
    if low <= desirable / undesirable <= high:
        assert (d_weight, u_weight) == (1.0, 1.0)
    assert kto_weights(5, 0) == kto_weights(0, 5) == (1.0, 1.0)


def test_a_round_with_only_thumbs_trains_a_kto_stage_the_gate_decides_on(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from safetensors.torch import load_file

    from app.config import Settings
    from feedback.store import Store
    from tests.test_round import ANSWERS, QUESTIONS

    domain = tmp_path / "domain"  # a system prompt only: no seeds, no replay
    domain.mkdir()
    (domain / "system_prompt.md").write_text("You help with gardens and kitchens.\n")
    for key, value in {
        "TUNELOOP_DATA_DIR": str(domain),
        "TUNELOOP_MODEL": str(tiny_model_dir),
        "TUNELOOP_TRACKER": "none",
        "TUNELOOP_EVAL_GENERATE": "false",
        "TUNELOOP_TRAIN_MAX_STEPS": "3",
        "TUNELOOP_TRAIN_BATCH_SIZE": "4",
        "TUNELOOP_SFT_LEARNING_RATE": "5e-3",
        "TUNELOOP_KTO_LEARNING_RATE": "5e-3",
        "TUNELOOP_TRAIN_SAVE_STEPS": "100",
        "TUNELOOP_TRAIN_EARLY_STOPPING_MIN_ROWS": "40",  # a validation split of these rows
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database)
    ann = store.add_user(name="ann", role="expert", password="pw").id
    for k, question in enumerate(QUESTIONS):
        for topic, answer in ANSWERS.items():
            prompt = question.format(t=topic)
            good = _reply(store, ann, prompt, f"{answer} Tip {k}.")
            store.rate(response_id=good, user_id=ann, up=True)
            bad = _reply(store, ann, prompt, f"No idea about {topic}, sorry.")
            store.rate(response_id=bad, user_id=ann, up=False, reason="no answer")
    assert store.counts()["preferences_total"] == 0  # thumbs only: no pair anywhere

    code, out, err = run_cli(monkeypatch, capsys, "train", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["gate"]) == {"sft", "kto"}, result
    assert result["gate"]["kto"]["decision"] in ("promote", "reject", "inconclusive")
    assert "heldout_loss" in result["metrics"]["kto"]
    # Held-out 👍/👎 replies are measured too (the base's implicit reward is 0: chance 0.5),
    # reported beside the gated metrics unless TUNELOOP_GATE_MARGINS names kto_acc.
    assert result["metrics"]["serving"]["kto_acc"] == 0.5
    assert 0.0 <= result["metrics"]["kto"]["kto_acc"] <= 1.0
    kto_acc = next(c for c in result["gate"]["kto"]["comparisons"] if c["metric"] == "kto_acc")
    assert kto_acc["verdict"] == "ungated" and kto_acc["n"] > 0

    folder = settings.rounds_dir / result["id"]
    counts = json.loads((folder / "snapshot.json").read_text())["counts"]
    assert counts["kto_train"] >= settings.kto_min_rows and counts["dpo_train"] == 0
    kto_rows = [
        json.loads(x) for x in (folder / "data" / "kto_train.jsonl").read_text().splitlines()
    ]
    assert {r["label"] for r in kto_rows} == {True, False}
    assert all(set(r) == {"prompt", "completion", "label"} for r in kto_rows)
    assert kto_rows[0]["prompt"][0]["role"] == "system"
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert ("kto", 3) in {(m["stage"], m["step"]) for m in logged}
    # the KTO stage validated on its own train rows, both labels among them
    kto_run = result["training"]["kto"]
    assert kto_run["validation_rows"] >= 4 and kto_run["off"] is None, kto_run
    assert kto_run["steps_run"] == 3 and ("kto", 3) in {
        (m["stage"], m["step"]) for m in logged if "eval_loss" in m
    }

    # KTO continued the SFT adapter and moved its LoRA weights; only LoRA tensors saved.
    sft = load_file(str(folder / "sft" / "adapter" / "adapter_model.safetensors"))
    kto = load_file(str(folder / "kto" / "adapter" / "adapter_model.safetensors"))
    assert sft.keys() == kto.keys() and all("lora_" in key for key in kto)
    assert any(not sft[key].equal(kto[key]) for key in sft)
    assert not (folder / "kto" / "adapter" / "ref").exists()


def test_kto_config_from_default_settings_is_valid_for_installed_trl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.config import Settings
    from training.round_config import RoundConfig
    from training.trainer_args import kto_config, stage_steps

    config = RoundConfig.from_settings(Settings())
    assert (config.kto_min_rows, config.kto_epochs) == (8, 1.0)
    rows = [{"label": i < 3} for i in range(12)]  # 3 👍, 9 👎
    kto = kto_config(config, tmp_path / "kto", 10, tmp_path, rows)
    assert kto.learning_rate == config.kto_learning_rate and kto.beta == config.kto_beta
    assert kto.max_length == config.max_length and kto.max_steps == 10
    assert not kto.gradient_checkpointing and kto.precompute_ref_log_probs
    assert kto.undesirable_weight == 1.0 and 1 <= kto.desirable_weight * 3 / 9 <= 4 / 3

    monkeypatch.setenv("TUNELOOP_KTO_BETA", "0.3")
    monkeypatch.setenv("TUNELOOP_KTO_LEARNING_RATE", "1e-4")
    monkeypatch.setenv("TUNELOOP_KTO_EPOCHS", "3")
    monkeypatch.setenv("TUNELOOP_KTO_MIN_ROWS", "20")
    monkeypatch.setenv("TUNELOOP_TRAIN_BATCH_SIZE", "2")
    config = RoundConfig.from_settings(Settings())
    assert (config.kto_beta, config.kto_learning_rate) == (0.3, 1e-4)
    assert config.kto_min_rows == 20 and stage_steps(12, config, "kto") == 18  # 3 x 6


def test_a_kto_stage_needs_enough_rows_of_both_labels_and_mixes_them() -> None:
    from training.round import kto_ready
    from training.stages import mixed_labels

    def rows(up: int, down: int) -> list[dict]:
        return [{"label": True, "n": i} for i in range(up)] + [
            {"label": False, "n": i} for i in range(down)
        ]

    assert kto_ready(rows(4, 4), 8) and kto_ready(rows(1, 9), 8)
    assert not kto_ready(rows(4, 3), 8)  # too few
    assert not kto_ready(rows(12, 0), 8) and not kto_ready(rows(0, 12), 8)  # one label
    assert not kto_ready([], 0)
    mixed = mixed_labels(rows(2, 4))
    assert [r["label"] for r in mixed] == [True, False, True, False, False, False]
    assert [r["n"] for r in mixed if not r["label"]] == [0, 1, 2, 3]  # order kept per label


def test_a_short_stage_takes_a_seeded_sample_keeping_each_labels_share() -> None:
    from training.trainer_args import rows_seen

    rows = [{"i": i, "label": i % 4 == 0} for i in range(40)]  # 10 👍, 30 👎
    config = round_config(batch_size=2, grad_accum=2)
    label = lambda r: r["label"]  # noqa: E731
    sample = rows_seen(rows, 2, config, group=label)  # 2 steps x 2 x 2 = 8 rows
    assert len(sample) == 8 and sum(r["label"] for r in sample) == 2
    assert [r["i"] for r in sample] == sorted(r["i"] for r in sample)
    assert rows_seen(rows, 2, config, group=label) == sample  # the same rows on resume
    assert rows_seen(rows, 10, config) is rows  # the steps cover an epoch: every row
    few = rows_seen(rows, 1, round_config(batch_size=2), group=label)
    assert {r["label"] for r in few} == {True, False}
