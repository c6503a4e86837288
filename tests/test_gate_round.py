"""The gate inside a real round on the tiny model: the generated-reply objective of a domain
with only a system prompt (`tuneloop train --json`), a promotion refused because CURRENT
changed during the round, and training rows whose prompt is in a gate eval set left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.test_gate_entry import base_replies, gate_env  # noqa: F401 (fixtures)
from tests.test_round import ANSWERS, QUESTIONS

PROMPT = "You answer questions about watering gardens, in one sentence."
MAX_NEW = 12  # the round's reply budget here (TUNELOOP_EVAL_MAX_NEW_TOKENS)
# Prompts for the pairs, unlike the conversations' prompts and unlike each other.
THINGS = ["tomatoes", "bread", "soup", "a bicycle chain", "a spider", "the weather", "an onion",
          "two carrots", "a potato", "the dough"]  # fmt: skip
ASKS = ["When should I check {t} in July?", "Why does {t} need a drop of oil?",
        "Which month is best for {t}?", "How many legs does {t} have?"]  # fmt: skip


@pytest.fixture
def only_prompt(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A domain folder holding system_prompt.md alone, in force, with a fast tiny round."""
    from app.config import Settings

    folder = tmp_path / "only-prompt"
    folder.mkdir()
    (folder / "system_prompt.md").write_text(PROMPT + "\n")
    for key, value in {
        "TUNELOOP_DATA_DIR": str(folder),
        "TUNELOOP_MODEL": str(tiny_model_dir),
        "TUNELOOP_TRACKER": "none",
        "TUNELOOP_SFT_STEPS": "8",
        "TUNELOOP_DPO_STEPS": "4",
        "TUNELOOP_TRAIN_BATCH_SIZE": "4",
        "TUNELOOP_SFT_LEARNING_RATE": "0.05",
        "TUNELOOP_DPO_LEARNING_RATE": "5e-3",
        "TUNELOOP_TRAIN_SAVE_STEPS": "100",
        "TUNELOOP_EVAL_MAX_NEW_TOKENS": str(MAX_NEW),
        "TUNELOOP_HELDOUT_MIN_ITEMS": "24",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


def test_a_candidate_with_worse_replies_is_rejected_though_its_heldout_loss_is_lower(
    only_prompt: Any,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Constructed so that the two disagree: experts approved the bare model's own replies
    to one set of prompts (the chosen side of pairs), and people wrote the answers to
    another (imported conversations). SFT on the written answers lowers the held-out loss
    on them, and moves the model's replies away from the approved ones: worse replies."""
    from feedback.records import NewExample, NewPreference
    from feedback.store import Store
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.prompt_files import row_conversation
    from training.registry import Registry

    asks = [a.format(t=t) for a in ASKS for t in THINGS]
    model, tok = load_for_generation(tiny_model_dir, bf16=False)  # as the round answers
    own = generate_replies(
        model, tok, [row_conversation({"prompt": q}, PROMPT) for q in asks], max_new_tokens=MAX_NEW
    )
    store = Store.open(only_prompt.database)
    store.add_bulk(
        preferences=[
            NewPreference(prompt=[{"role": "user", "content": q}], chosen=g, rejected="No idea.")
            for q, g in zip(asks, own, strict=True)
        ],
        examples=[
            NewExample(
                messages=[
                    {"role": "user", "content": question.format(t=topic)},
                    {"role": "assistant", "content": f"{answer} Tip {k}."},
                ]
            )
            for topic, answer in ANSWERS.items()
            for k, question in enumerate(QUESTIONS)
        ],
    )

    code, out, err = run_cli(monkeypatch, capsys, "train", "--json")
    assert code == 0, (out, err)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["objectives"] == ["reply_match"], result
    assert result["status"] == "rejected" and result["decision"] == "reject", result
    assert Registry(only_prompt.adapters_dir).current() is None
    comps = {c["name"]: c for c in result["gate"][result["candidate_stage"]]["comparisons"]}
    replies, loss = comps["reply_match"], comps["heldout_loss"]
    print(f"reply_match {replies['diff']:+.3f} on {replies['n']}; heldout_loss {loss['diff']:+.3f}")
    assert replies["role"] == "objective" and replies["verdict"] == "worse", replies
    assert replies["serving"] > replies["candidate"] and replies["n"] >= 8
    assert loss["role"] == "soft guard" and loss["verdict"] == "better", loss  # shown lower
    assert loss["n"] < replies["n"]  # measured on the written answers only
    assert any(r.startswith(f"{result['candidate_stage']} reject: reply_match -") for r in
               result["reasons"]), result["reasons"]  # fmt: skip
    report = Path(result["report"]).read_text()
    assert "objective (what may promote): reply_match" in report
    assert "| reply_match | objective |" in report


def test_a_round_refuses_to_promote_when_current_changed_under_it(
    gate_env: dict[str, Any],  # noqa: F811
    base_replies: list[str],  # noqa: F811
    tiny_adapters: dict[str, Path],
) -> None:
    """The eval set makes the candidate win; while the round is gating, an operator promotes
    another version. The round was judged against the bare base, so it must not replace
    the operator's choice: it stays registered as passed, with status stale."""
    from app.config import Settings
    from feedback.store import Store
    from tests.test_gate_entry import write_set
    from training.registry import Registry
    from training.round import run_round
    from training.round_config import RoundConfig
    from training.rounds_dir import list_rounds

    write_set(gate_env["set"], base_replies, same=False)
    settings = Settings()
    registry = Registry(settings.adapters_dir)
    registry.register("v1", tiny_adapters["v1"])

    def operator_meanwhile(state: dict) -> None:
        if state.get("stage") == "gate" and registry.current() is None:
            registry.promote("v1", by="olga")

    result = run_round(
        store=Store.open(settings.database),
        registry=registry,
        model_dir=Path(settings.model or ""),
        config=RoundConfig.from_settings(settings, round_mode="fresh"),
        rounds_dir=settings.rounds_dir,
        on_progress=operator_meanwhile,
    )
    assert result.decision == "promote", result.reasons
    assert result.status == "stale" and registry.current() == "v1", result
    assert result.serving_before is None and result.serving_after == "v1"
    assert "CURRENT changed from the bare base model to v1" in result.reasons[0]
    assert list_rounds(settings.rounds_dir)[-1]["status"] == "stale"
    snapshot = json.loads((settings.rounds_dir / result.id / "snapshot.json").read_text())
    assert snapshot["curation"]["in_gate_eval_set"] == 0  # the set's prompts were not asked
    assert registry.info(result.version or "")["status"] == "passed"


def test_training_rows_whose_prompt_is_in_a_gate_eval_set_are_left_out(
    tmp_path: Path, _isolated_home: Path
) -> None:
    """The gate's own questions come back as feedback (an expert asked them in the chat):
    trained on, the round would pass its gate by heart. They stay out of training (in any
    spelling the near-duplicate check catches), and the snapshot counts them."""
    from feedback.records import NewExample
    from feedback.store import Store
    from training.datasets import take_snapshot

    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    asked = [(q.format(t=t), f"{a} Tip {k}.") for t, a in ANSWERS.items()
             for k, q in enumerate(QUESTIONS)]  # fmt: skip
    store.add_bulk(
        examples=[
            NewExample(
                messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            )
            for q, a in asked
        ]
    )
    before = take_snapshot(store, system_prompt=PROMPT)
    trained = {r["messages"][-2]["content"] for r in before.sft_train}
    leaked = sorted(trained)[:5]
    evalset = tmp_path / "gate_set.jsonl"
    rows = [{"prompt": q} for q in leaked[:4]] + [{"prompt": leaked[4].upper() + "  "}]
    evalset.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    after = take_snapshot(store, system_prompt=PROMPT, gate_eval_sets=(evalset,))
    kept = {r["messages"][-2]["content"] for r in after.sft_train}
    assert kept == trained - set(leaked)
    assert after.info["curation"]["in_gate_eval_set"] == 5
    assert before.info["curation"]["in_gate_eval_set"] == 0
    assert after.sft_heldout == before.sft_heldout  # held-out rows are never trained on
