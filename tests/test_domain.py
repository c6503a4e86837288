"""Bring your own domain: `tuneloop init`, and a folder holding only system_prompt.md through
`train` (gated on its replies), `generate`, `eval` and a real `serve` (tiny model)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.cli import run_cli
from training.domain import FILES, skeleton

PROMPT = "You answer questions about watering gardens, in one sentence."


def test_init_writes_a_skeleton_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from training.datasets import read_seed_rows
    from training.eval.evaluate import read_general_checks
    from training.eval.prompt_files import read_rows
    from training.eval.rubric import load_rubric

    folder = tmp_path / "domain"
    code, out, err = run_cli(monkeypatch, capsys, "init", str(folder), "--json")
    assert code == 0, err
    written = json.loads(out)["files"]
    assert sorted(written) == sorted(skeleton())
    assert sorted(p.name for p in folder.iterdir()) == sorted(written)
    # Only system_prompt.md is active; the optional files are written as working examples.
    active = {f.name for f in FILES} & set(written)
    assert active == {"system_prompt.md"}
    assert load_rubric(folder / "rubric.json.example").checks
    assert len(read_seed_rows(folder / "seed_sft.jsonl.example")) == 2
    assert read_rows(folder / "replay_prompts.jsonl.example")
    assert read_general_checks(folder / "general_checks.jsonl.example")[0]["must_match"]
    assert read_rows(folder / "eval_set.jsonl.example")
    readme = (folder / "README.md").read_text()
    assert all(f"`{f.name}`" in readme for f in FILES)

    # A second init, or one into a folder holding any of these files, writes nothing.
    (folder / "system_prompt.md").write_text(PROMPT)
    (folder / "README.md").unlink()
    code, out, err = run_cli(monkeypatch, capsys, "init", str(folder))
    assert code == 1 and not out and len(err.strip().splitlines()) == 1
    assert "already has" in err and "system_prompt.md" in err and "nothing was written" in err
    assert (folder / "system_prompt.md").read_text() == PROMPT
    assert not (folder / "README.md").exists()


@pytest.fixture
def minimal(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A domain folder with system_prompt.md only, in force; the tiny model."""
    folder = tmp_path / "only-prompt"
    folder.mkdir()
    (folder / "system_prompt.md").write_text(PROMPT + "\n")
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(folder))
    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    return folder


def test_a_round_with_only_a_system_prompt_trains_is_gated_on_replies_and_says_what_it_skipped(
    minimal: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from app.config import Settings
    from feedback.records import NewPreference
    from feedback.store import Store
    from training.registry import Registry

    for key, value in {
        "TUNELOOP_TRACKER": "none",
        "TUNELOOP_SFT_STEPS": "4",
        "TUNELOOP_DPO_STEPS": "4",
        "TUNELOOP_TRAIN_BATCH_SIZE": "4",
        "TUNELOOP_SFT_LEARNING_RATE": "5e-3",
        "TUNELOOP_DPO_LEARNING_RATE": "5e-3",
        "TUNELOOP_TRAIN_SAVE_STEPS": "100",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    # 30 prompts different enough that curation keeps them apart, each with its own answer.
    from tests.test_round import ANSWERS, QUESTIONS

    Store.open(settings.database).add_bulk(
        preferences=[
            NewPreference(
                prompt=[{"role": "user", "content": question.format(t=topic)}],
                chosen=f"{answer} Tip {k}.",
                rejected="No idea, sorry.",
            )
            for topic, answer in ANSWERS.items()
            for k, question in enumerate(QUESTIONS)
        ]
    )
    code, out, err = run_cli(monkeypatch, capsys, "train", "--json")
    assert code == 0, (out, err)
    result = json.loads(out.strip().splitlines()[-1])  # the trainer prints its log lines too
    # Gated on its generated replies: the tiny model's replies match none of the approved
    # answers before or after, so nothing is shown better and nothing ships. (The held-out
    # loss and preference accuracy improve, but the feedback's own labels never promote.)
    assert result["objectives"] == ["reply_match"], result
    assert result["status"] in ("inconclusive", "rejected"), result
    assert Registry(settings.adapters_dir).current() is None

    folder = settings.rounds_dir / result["id"]
    report = json.loads((folder / "report.json").read_text())
    skipped = report["not_run"]
    for name in ("seed_sft.jsonl", "replay_prompts.jsonl", "rubric.json", "general_checks.jsonl"):
        assert any(str(minimal / name) in line for line in skipped), (name, skipped)
    assert any(line.startswith("rubric_pass not measured") for line in skipped)
    assert "## Checks not run" in (folder / "report.md").read_text()
    snap = json.loads((folder / "snapshot.json").read_text())
    assert snap["seed_rows"] == 0 and snap["replay_rows"] == 0
    assert snap["split"]["heldout_prompts"] == 10  # the minimum, capped at a third of 30
    # Every training pair carries the folder's system prompt (no seeds, no replay: no SFT).
    data = folder / "data"
    assert not (data / "sft_train.jsonl").read_text()
    dpo = [json.loads(line) for line in (data / "dpo_train.jsonl").read_text().splitlines()]
    assert len(dpo) == 20 and all(r["prompt"][0]["content"] == PROMPT for r in dpo)


def test_generate_and_eval_with_only_a_system_prompt(
    minimal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "How often should I water tomatoes?"}) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--in", str(src), "--out", str(out), "--max-new-tokens", "4", "--json"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    reply = json.loads(out.read_text())["reply"]

    evalset = tmp_path / "set.jsonl"
    evalset.write_text(
        json.dumps({"prompt": "How often should I water tomatoes?", "reference": reply}) + "\n"
    )
    base = ["eval", "--set", str(evalset), "--adapters", "base", "--max-new-tokens", "4"]
    code, stdout, err = run_cli(monkeypatch, capsys, *base, "--json")
    assert code == 0, err  # auto: exact (the row has a reference); no rubric file, no rubric
    result = json.loads(stdout)
    assert result["scorers"] == ["exact"] and result["metrics"]["base"]["exact"] == 1.0
    # Nothing to score with at all: one line saying what to pass.
    evalset.write_text(json.dumps({"prompt": "Hello?"}) + "\n")
    code, stdout, err = run_cli(monkeypatch, capsys, *base)
    assert code == 1 and "--scorer" in err and len(err.strip().splitlines()) == 1


def test_serve_with_only_a_system_prompt(minimal: Path, _isolated_home: Path) -> None:
    from gradio_client import Client

    from tests.server import add_user, serve

    home = _isolated_home
    home.mkdir(parents=True, exist_ok=True)
    add_user(home, "erin", "expert", "pw-erin-secret", TUNELOOP_DATA_DIR=str(minimal))
    with serve(home, model=None, TUNELOOP_MAX_NEW_TOKENS="4") as (url, _):
        client = Client(url, auth=("erin", "pw-erin-secret"), verbose=False)
        client.predict("How often should I water tomatoes?", api_name="/chat")
    with sqlite3.connect(home / "tuneloop.db") as conn:
        (prompt_json,) = conn.execute("select prompt_json from responses").fetchone()
    assert json.loads(prompt_json)[0] == {"role": "system", "content": PROMPT}
