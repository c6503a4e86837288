"""The eval-set gate through every entry point that starts a round: `tuneloop train`,
`tuneloop watch --once` (twice, as two processes: the second sees nothing new and runs no
round), and the Operator tab's button in a real browser.

An eval set named in TUNELOOP_GATE_EVAL_SETS on which the candidate loses blocks the
promotion; the same set rewritten so that the candidate wins allows it. The tiny model's
replies are gibberish, so each row says which outcome counts as a pass: `"same": true` rows
pass when the reply equals the bare base model's greedy reply (the reference), `"same":
false` rows when it differs. A trained candidate answers differently from the base, so it
loses on a set of "same" rows and wins on a set of "different" rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.tiny import add_pairs

ROWS = 10  # above the gate's default minimum of 8 paired items
MAX_NEW = 16
QUESTIONS = [f"How do I water tomatoes, case {i}?" for i in range(ROWS)]
SCORER = '''
def agrees(rows, replies):
    """1 for a row whose reply is (or, with "same": false, is not) the reference."""
    ok = [(reply.strip() == row["reference"].strip()) == row["same"]
          for row, reply in zip(rows, replies)]
    return {"agrees": sum(ok) / len(ok)}
'''


@pytest.fixture(scope="module")
def base_replies(tiny_model_dir: Path) -> list[str]:
    """The bare base model's greedy replies to QUESTIONS, as the eval will ask them."""
    from app.config import Settings
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.prompt_files import row_conversation

    system = Settings(model=str(tiny_model_dir)).system_prompt()
    model, tok = load_for_generation(tiny_model_dir, bf16=False)  # as the round answers
    conversations = [row_conversation({"prompt": q}, system) for q in QUESTIONS]
    return generate_replies(model, tok, conversations, max_new_tokens=MAX_NEW)


def write_set(path: Path, base_replies: list[str], *, same: bool) -> None:
    rows = [
        {"prompt": q, "reference": r, "same": same}
        for q, r in zip(QUESTIONS, base_replies, strict=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def gate_env(
    _isolated_home: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    base_replies: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Settings for a fast round on the tiny model whose only gate is the eval set."""
    from app.config import Settings
    from feedback.store import Store

    scorer = tmp_path / "gate_scorer.py"
    scorer.write_text(SCORER, encoding="utf-8")
    evalset = tmp_path / "demo_set.jsonl"
    write_set(evalset, base_replies, same=True)
    env = {
        "TUNELOOP_MODEL": str(tiny_model_dir),
        "TUNELOOP_TRACKER": "none",
        "TUNELOOP_EVAL_GENERATE": "false",
        "TUNELOOP_SFT_STEPS": "2",
        "TUNELOOP_DPO_STEPS": "2",
        "TUNELOOP_TRAIN_BATCH_SIZE": "4",
        "TUNELOOP_SFT_LEARNING_RATE": "0.05",
        "TUNELOOP_DPO_LEARNING_RATE": "0.05",
        "TUNELOOP_GENERATE_MAX_NEW_TOKENS": str(MAX_NEW),
        "TUNELOOP_GATE_EVAL_SETS": str(evalset),
        "TUNELOOP_EVAL_SCORER": f"{scorer}:agrees",
        "TUNELOOP_GATE_MARGINS": "demo_set:agrees=0",
        "TUNELOOP_ROUND_MIN_NEW": "5",
        # the rounds here retrain the same rows against a changed eval set
        "TUNELOOP_ROUND_MODE": "fresh",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    add_pairs(
        Store.open(settings.database),
        12,
        prompt="How do I grow tomatoes, question {i}?",
        chosen="Deep water twice a week and a little mulch.",
        rejected="Bread needs flour.",
    )
    return {"env": env, "set": evalset, "settings": settings}


def _current(settings: Any) -> str | None:
    from training.registry import Registry

    return Registry(settings.adapters_dir).current()


def test_tuneloop_train_is_gated_by_the_eval_set(
    gate_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = gate_env["settings"]
    code, out, err = run_cli(monkeypatch, capsys, "train", "--json")
    lost = json.loads(out.strip().splitlines()[-1])
    assert code == 0, err
    assert lost["status"] == "rejected" and lost["decision"] == "reject", lost
    assert any("demo_set:agrees -" in r for r in lost["reasons"]), lost["reasons"]
    assert _current(settings) is None
    comparisons = lost["gate"][lost["candidate_stage"]]["comparisons"]
    agrees = next(c for c in comparisons if c["name"] == "demo_set:agrees")
    assert agrees["n"] == ROWS and agrees["high"] < 0 and agrees["verdict"] == "worse"

    # The operator can still serve a rejected version, but only by saying so.
    code, _, err = run_cli(monkeypatch, capsys, "promote", lost["version"])
    assert code == 1 and "--force" in err and _current(settings) is None
    code, out, _ = run_cli(monkeypatch, capsys, "promote", lost["version"], "--force", "--json")
    assert (
        code == 0
        and json.loads(out.strip().splitlines()[-1])["forced"]
        and _current(settings) == lost["version"]
    )
    code, _, _ = run_cli(monkeypatch, capsys, "rollback")
    assert code == 0 and _current(settings) is None

    write_set(gate_env["set"], _base(gate_env), same=False)
    code, out, err = run_cli(monkeypatch, capsys, "train", "--json")
    won = json.loads(out.strip().splitlines()[-1])
    assert code == 0, err
    assert won["status"] == "promoted" and won["decision"] == "promote", won
    assert _current(settings) == won["version"]
    from training.registry import Registry

    info = Registry(settings.adapters_dir).info(won["version"])
    assert info["evals"]["demo_set"]["metrics"]["agrees"] == 1.0  # recorded with the version

    # A set on which nothing differs (every reply fails json) cannot tell: inconclusive.
    monkeypatch.setenv("TUNELOOP_EVAL_SCORER", "json")
    monkeypatch.setenv("TUNELOOP_GATE_MARGINS", "demo_set:json_valid=0")
    code, out, err = run_cli(monkeypatch, capsys, "train")
    assert code == 0, err
    assert ": inconclusive" in out and "items would be needed" in out
    assert _current(settings) == won["version"]


def _base(gate_env: dict[str, Any]) -> list[str]:
    rows = [json.loads(x) for x in gate_env["set"].read_text().splitlines()]
    return [r["reference"] for r in rows]


def test_watch_once_is_gated_by_the_eval_set(gate_env: dict[str, Any]) -> None:
    settings = gate_env["settings"]
    env = {**os.environ, **gate_env["env"]}

    def watch_once() -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "watch", "--once", "--json"],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # One round, lost on the eval set: the rejection names it (without the set the round
    # would have no objective and end inconclusive). `train` above shows both directions.
    first = watch_once()
    log = (settings.rounds_dir / "watch.log").read_text()
    outcome = first["result"]["round"]
    assert first["run"] and "12 new preferences" in first["reason"], first
    assert first["result"]["returncode"] == 0 and outcome["status"] == "rejected", log[-3000:]
    assert any("demo_set:agrees -" in r for r in outcome["reasons"]), outcome["reasons"]
    assert _current(settings) is None
    state = json.loads((settings.rounds_dir / outcome["id"] / "state.json").read_text())
    assert state["status"] == outcome["status"]

    # Run again (a restart of the watcher): nothing new since that round, so no round.
    second = watch_once()
    assert not second["run"] and second["new"]["preferences"] == 0, second
    assert second["last_round"] == outcome["id"]


@pytest.mark.browser
def test_the_operator_tab_acts_and_its_round_is_gated_by_the_eval_set(
    gate_env: dict[str, Any], tiny_model_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    """The Operator tab in a real browser: an operator sees it, promotes and rolls back from
    it, and starts a round that the eval set gates (a second start meanwhile is refused);
    an expert never sees the tab."""
    from playwright.sync_api import expect

    from tests.server import add_user, serve
    from tests.test_browser import ARGS, CHROMIUM, login

    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian chromium: apt-get install chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    from training.registry import Registry

    settings = gate_env["settings"]
    home = settings.home
    add_user(home, "olga", "operator", "pw-olga-long")
    add_user(home, "erin", "expert", "pw-erin-secret")
    registry = Registry(settings.adapters_dir)
    registry.register("v1", tiny_adapters["v1"])
    write_set(gate_env["set"], _base(gate_env), same=False)
    env = {k: v for k, v in gate_env["env"].items() if k != "TUNELOOP_MODEL"}
    with (
        serve(home, model=str(tiny_model_dir), **env) as (url, _),
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = login(browser, url, "olga", "pw-olga-long")
        tab = page.get_by_role("tab", name="Operator")
        expect(tab).to_be_visible()
        tab.click()
        expect(page.locator("#op-summary")).to_contain_text("Serving")
        expect(page.locator("#op-summary")).to_contain_text("New since the last round")
        progress = page.locator("#op-progress")
        expect(progress).to_contain_text("No round has run yet")
        page.screenshot(path="/tmp/operator-tab.png", full_page=True)

        # Promote from the tab; the running server follows CURRENT. Then back to the base.
        page.locator("#op-version input").click()
        page.get_by_role("option", name="v1").click()
        page.locator("#op-promote").click()
        expect(page.locator("#op-notice")).to_contain_text("Now serving v1")
        expect(page.locator("#model-info")).to_contain_text("v1", timeout=30_000)
        assert registry.current() == "v1"
        page.locator("#op-rollback").click()
        expect(page.locator("#op-notice")).to_contain_text("bare base model")
        assert registry.current() is None

        # One round, won on the eval set (the version's record keeps the set's score):
        # without the set the round would have no objective and end inconclusive.
        page.locator("#op-start").click()
        expect(page.locator("#op-notice")).to_contain_text("Started a round")
        page.locator("#op-start").click()  # the round takes seconds to start its process
        expect(page.get_by_text("A round is already running").first).to_be_visible()  # a toast
        expect(progress).to_contain_text("promoted", timeout=300_000)
        version = _current(settings)
        assert version is not None and version.startswith("r0001-")
        info = registry.info(version)
        assert info["evals"]["demo_set"]["metrics"]["agrees"] == 1.0
        expect(page.locator("#model-info")).to_contain_text(version, timeout=30_000)
        page.locator("#op-refresh").click()
        expect(page.locator("#op-history")).to_contain_text(version.split("-")[0])

        expert = login(browser, url, "erin", "pw-erin-secret")
        expect(expert.locator("#model-info")).to_contain_text("erin")
        expert.wait_for_timeout(2_000)  # let every page-load event finish before looking
        expect(expert.get_by_role("tab", name="Operator")).to_have_count(0)
        expect(expert.locator("#op-start")).not_to_be_visible()
        browser.close()
