"""The loop benchmark's ticket-triage domain and simulated expert, and its smoke run.

The checker and the expert must disagree where they are meant to (the expert reads the
answer in prose, the checker wants the two fields), and `python -m bench.loop_quality
--smoke` must run its rounds end to end through the real `tuneloop train`, on a single-turn
and on the multi-turn domain. (Every domain's files, checker and expert: tests/test_domains.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.domains import load_domain
from bench.experts import SimulatedExpert
from bench.loop_feedback import feedback_kinds
from training.eval.scorers import load_scorer

ROOT = Path(__file__).resolve().parent.parent
TICKETS = load_domain("tickets")
DOMAIN = TICKETS.folder
expert_verdict = TICKETS.expert.verdict
ITEM = {"prompt": "Order #416183 hasn't arrived.", "category": "shipping", "order": "416183"}


def test_checker_scores_the_fields_not_the_wording() -> None:
    checker = load_scorer(f"{DOMAIN / 'scorer.py'}:triage")
    rows = [ITEM] * 5 + [{**ITEM, "order": "none"}]
    replies = [
        "category: shipping\norder: 416183",
        "Order: #416183\nCategory: Shipping\nWe'll look into it.",
        "category: shipping\norder: 416184",  # a wrong number
        "category: returns\norder: 416183",  # a wrong category
        "This is a shipping ticket about order 416183.",  # right, but not the asked form
        "category: shipping\norder: none",
    ]
    metrics = checker(rows, replies)
    assert metrics == {"correct": 3 / 6, "category_acc": 4 / 6, "order_acc": 4 / 6,
                       "parseable": 5 / 6}  # fmt: skip


def test_expert_judges_by_the_gold_answer() -> None:
    # The expert accepts the prose answer the checker rejects, and rejects wrong values.
    assert expert_verdict("This is a shipping ticket about order 416183.", ITEM) == ""
    assert expert_verdict("category: shipping\norder: 416183", ITEM) == ""
    assert "416183" in expert_verdict("category: shipping\norder: 123456", ITEM)
    assert "shipping" in expert_verdict("category: returns\norder: 416183", ITEM)
    assert expert_verdict("category: shipping or returns\norder: 416183", ITEM)
    assert expert_verdict("category: shipping\norder: 416183", {**ITEM, "order": "none"})
    # A field's value is what the reply says, even when it is not a category or a number...
    no_order = {**ITEM, "order": "none"}
    assert "none" in expert_verdict("category: shipping\norder: 12", no_order)
    assert "none" in expert_verdict("category: shipping\norder: NoRescue", no_order)
    assert expert_verdict("category: refund\norder: 416183\nRouted to the shipping team.", ITEM)
    # ...and "no" gives none: the expert accepts it, the checker (which wants "none") does not.
    assert expert_verdict("Category: Shipping\nOrder: No", no_order) == ""
    checker = load_scorer(f"{DOMAIN / 'scorer.py'}:triage")
    assert checker([no_order], ["Category: Shipping\nOrder: No"])["correct"] == 0.0


def test_corrections_vary_and_always_check_out() -> None:
    import random

    checker = load_scorer(f"{DOMAIN / 'scorer.py'}:triage")
    rng = random.Random(0)
    expert = SimulatedExpert(TICKETS.expert)
    texts = {expert.edit_of("I could not read that.", ITEM, rng) for _ in range(50)}
    assert len(texts) >= 4
    assert all(checker([ITEM], [t])["correct"] == 1.0 for t in texts)
    assert all(expert_verdict(t, ITEM) == "" for t in texts)


def test_an_edit_is_never_the_reply_itself(tmp_path: Path) -> None:
    """A mistaken 👎 can land on a reply that is already the answer as the expert writes it:
    the edit takes another wording, and where there is none the mistake is stored as a 👎
    (the chat page refuses an edit that changes nothing, and the round must go on)."""
    import random
    from types import SimpleNamespace

    from bench.experts import Judgement
    from bench.loop_feedback import record_feedback
    from feedback.store import Store

    answer = "category: shipping\norder: 416183"
    wordings = [answer, "shipping, 416183"]
    two = SimulatedExpert(
        SimpleNamespace(verdict=expert_verdict, corrections=lambda item: wordings)
    )
    rng = random.Random(0)
    assert {two.edit_of(answer, ITEM, rng) for _ in range(20)} == {"shipping, 416183"}
    one = SimulatedExpert(
        SimpleNamespace(verdict=expert_verdict, corrections=lambda item: [answer])
    )
    assert one.edit_of(answer + "\n", ITEM, rng) is None

    store = Store.open(f"sqlite:///{tmp_path / 'tuneloop.db'}")
    user = store.add_user(name="sim-expert", role="expert", password="not-used-xxxxxxxx")
    n = 20
    mistaken = [Judgement(right=False, reason="wrong answer", mistaken=True)] * n
    tally = record_feedback(store, user.id, [ITEM] * n, [answer] * n,
                            {i: "no idea" for i in range(n)}, "You triage.", expert=one,
                            judgements=mistaken, variant="full", adapter=None, seed=3)  # fmt: skip
    compares = tally["compare_picks"] + tally["ties"]
    assert tally["corrections"] == 0 and compares and tally["thumbs_down"] == n - compares
    counts = store.counts()
    assert (counts["corrections"], counts["ratings_down"]) == (0, tally["thumbs_down"])


def test_feedback_mix_is_mostly_thumbs() -> None:
    kinds = feedback_kinds(120, seed=3)
    assert {k: kinds.count(k) for k in set(kinds)} == {"thumbs": 72, "correction": 30,
                                                       "compare": 18}  # fmt: skip
    assert kinds == feedback_kinds(120, seed=3) != feedback_kinds(120, seed=4)


def test_smoke_run_goes_through_real_rounds(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two rounds of the full mix on the tiny model on tickets, one on the multi-turn
    appointments domain: the expert's feedback reaches the store, each round is a real
    `tuneloop train` with the gate, test-set correctness is measured with an interval, and
    the results JSON carries the commit, the settings, the seeds and the figures.
    (Minutes on a busy 2-core machine.)"""
    env = {**os.environ, "TUNELOOP_HOME": str(tmp_path / "operator"),
           "TUNELOOP_BENCH_RESULTS": str(tmp_path / "results")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loop_quality", "--smoke", "--model", str(tiny_model_dir),
         "--home", str(tmp_path / "loop"), "--variants", "full", "--rounds", "2",
         "--domain", "tickets"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "loop" / "tickets" / "seed-0"
    summary = json.loads((root / "loop_quality.json").read_text())
    runs = summary["runs"]
    assert [(r["variant"], r["round"]) for r in runs] == [("full", 1), ("full", 2)]
    for r in runs:
        # Known in advance: the tiny random model never writes a triage the checker
        # accepts, before or after a round, so the objective stays at 0 and cannot be shown
        # better; a `rejected` would mean a guard caught a worse model.
        assert r["status"] == "inconclusive", r["gate"]
        assert set(r["gate"]) >= {"sft"}
        (objective,) = [c for c in r["gate"]["sft"]["comparisons"]
                        if c["name"] == "tickets_eval:correct"]  # fmt: skip
        assert objective["serving"] == objective["candidate"] == 0.0
        assert r["heldout"]["n"] == 5 and r["heldout"]["low"] <= r["heldout"]["correct"]
        assert sum(r["expert"].values()) == 6
        assert r["expert_mistakes"] == 1  # round(6 * 10%)
    assert "full       2" in proc.stdout
    (result,) = (tmp_path / "results").glob("loop_quality-dev-*.json")
    saved = json.loads(result.read_text())
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", saved["commit"]) and saved["seeds"] == [0]
    assert saved["settings"]["expert_mistakes"] == 0.1 and saved["settings"]["domains"] == [
        "tickets"
    ]
    assert saved["figures"]["final"] is False and saved["figures"]["split"] == {
        "tickets": "development"
    }
    (figure,) = [f for f in saved["figures"]["suite"] if (f["variant"], f["round"]) == ("full", 2)]
    gain = figure["gain_over_base"]
    assert gain["low"] <= gain["diff"] <= gain["high"] and gain["domains"] == 1


def test_smoke_run_on_the_multi_turn_domain(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One round on appointments, whose items are earlier turns, not a prompt: the store
    keeps the turns, the round trains on them and its gate scores the domain's eval set.
    Its expert names the answer in each honest 👎 (`--expert-reasons answer`), and those
    reasons reach the round as rows of their own."""
    env = {**os.environ, "TUNELOOP_HOME": str(tmp_path / "operator"),
           "TUNELOOP_BENCH_RESULTS": str(tmp_path / "results")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loop_quality", "--smoke", "--model", str(tiny_model_dir),
         "--home", str(tmp_path / "loop"), "--variants", "full", "--rounds", "1",
         "--domain", "appointments", "--expert-reasons", "answer"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "loop" / "appointments" / "seed-0"
    (run,) = json.loads((root / "loop_quality.json").read_text())["runs"]
    comparisons = run["gate"]["sft"]["comparisons"]
    assert any(c["name"] == "appointments_eval:correct" for c in comparisons)
    from feedback.store import Store

    store = Store.open(f"sqlite:///{root / 'full' / 'tuneloop.db'}")
    rows = [*store.sft_rows(), *store.dpo_rows(), *store.kto_rows()]
    assert rows  # 6 replies judged with a 10% mistake share: something reached training
    for row in rows:  # every row keeps the earlier turns the last one depends on
        turns = row["messages"] if "messages" in row else row["prompt"]
        roles = [t["role"] for t in turns if t["role"] != "system"]
        assert roles[:3] == ["user", "assistant", "user"], roles
    # the tiny model's replies are all wrong, so the honest 👎s name answers and become SFT
    # rows and pairs of their own (the expert's own reasons name none: tests/test_domains.py)
    assert "reason" in store.sft_row_sources().values()
    assert "reason" in store.dpo_row_sources().values()
    (result,) = (tmp_path / "results").glob("loop_quality-dev-*.json")
    assert json.loads(result.read_text())["settings"]["expert_reasons"] == "answer"


def test_sabotaged_rounds_go_on_from_the_honest_round(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Under the production settings each sabotaged round starts where the honest round left
    the loop: a copy of its home (its store, its registry and the version it promoted), new
    prompts (round 2's), every label flipped; the summary measures it against that start."""
    env = {**os.environ, "TUNELOOP_HOME": str(tmp_path / "operator"),
           "TUNELOOP_BENCH_RESULTS": str(tmp_path / "results")}  # fmt: skip
    command = [sys.executable, "-m", "bench.loop_quality", "--smoke", "--model",
               str(tiny_model_dir), "--home", str(tmp_path / "loop"), "--variants", "none",
               "--sabotage-runs", "1", "--domain", "tickets"]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "loop" / "tickets" / "sabotage"
    summary = json.loads((root / "sabotage.json").read_text())
    assert summary["settings"] == "production" and summary["sabotage_from"] == "tuned"
    honest, sabotaged = summary["runs"]
    assert (honest["variant"], honest["round"]) == ("honest", 1)
    assert (sabotaged["variant"], sabotaged["round"]) == ("sabotage-1", 2)
    assert summary["start_version"] == honest["serving_after"]
    assert summary["start_hits"] == honest["hits"]  # the start is the honest round's version
    assert sabotaged["gain_over_start"]["low"] <= sabotaged["gain_over_start"]["diff"]
    assert summary["sabotage_runs"] == 1
    assert summary["sabotage_promoted"] == int(sabotaged["status"] == "promoted")
    from feedback.store import Store

    def responses(home: str) -> list[str]:
        store = Store.open(f"sqlite:///{root / home / 'tuneloop.db'}")
        user = store.get_user("sim-expert")
        assert user is not None
        chats = store.list_conversations(user_id=user.id)
        texts = [m.content for c in chats
                 for m in store.conversation_messages(conversation_id=c.id, user_id=user.id)
                 if m.role == "user"]  # fmt: skip
        store.engine.dispose()
        return texts

    before, after = responses("honest"), responses("sabotage-1")
    assert len(before) == 6 and set(before) <= set(after)  # the honest round's feedback kept
    assert len(after) == 12 and len(set(after) - set(before)) == 6  # and 6 new prompts
    (result,) = (tmp_path / "results").glob("loop_quality-dev-*.json")
    saved = json.loads(result.read_text())
    assert saved["figures"]["sabotage"][0]["sabotage_from"] == "tuned"

    # Going on from an honest round needs its home: without one the check says so.
    proc = subprocess.run([*command[:7], str(tmp_path / "elsewhere"), *command[8:],
                           "--skip-honest"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "honest round's home" in proc.stderr + proc.stdout


def test_sabotage_starts_from_the_tuned_version_unless_easy() -> None:
    from bench.loop_quality import parse_args
    from bench.loop_sabotage import sabotage_start

    assert sabotage_start(parse_args(["--sabotage-runs", "1"])) == "tuned"
    assert sabotage_start(parse_args(["--sabotage-runs", "1", "--sabotage-easy"])) == "base"
    assert sabotage_start(parse_args(["--sabotage-runs", "1", "--sabotage-from", "base"])) == (
        "base"
    )
    with pytest.raises(SystemExit):  # the easy check was measured from the base only
        parse_args(["--sabotage-runs", "1", "--sabotage-easy", "--sabotage-from", "tuned"])
