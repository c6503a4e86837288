"""Our own Argilla logic without a server: verdicts, agreement, parsing, the outbox, the CLI.

The same paths run against the real local Argilla in tests/test_argilla.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.main import app
from feedback.argilla.agreement import agreement_report, alpha, verdict
from feedback.argilla.outbox import (
    queue_pair,
    queue_undecided_comparisons,
    thumbs_down_to_pair,
)
from feedback.argilla.sync import SyncReport, _parse
from feedback.errors import FeedbackError
from feedback.store import Store

PROMPT = [{"role": "user", "content": "How do I reset my router?"}]


def test_verdict_majority_split_and_tie() -> None:
    assert verdict(["A", "A"]) == ("A", 1.0)
    assert verdict(["A", "B"]) == ("split", 0.5)
    assert verdict(["B", "A", "B"]) == ("B", pytest.approx(2 / 3))
    assert verdict(["tie", "tie", "A"])[0] == "tie"


def test_agreement_matches_hand_computed_values() -> None:
    # Two annotators, four records: agree on 1, 2 and 4, disagree on 3.
    votes = [(1, "x", "A"), (1, "y", "A"), (2, "x", "B"), (2, "y", "B"),
             (3, "x", "A"), (3, "y", "B"), (4, "x", "tie"), (4, "y", "tie")]  # fmt: skip
    report = agreement_report(votes)
    assert report["percent_agreement"] == 0.75
    # Pooled A 3, B 3, tie 2 of 8: D_o = 2/8, D_e = 1 - (6 + 6 + 2)/56 = 0.75; 1 - 1/3.
    assert report["alpha"] == pytest.approx(2 / 3)
    assert report["per_annotator"]["x"] == {
        "votes": 4,
        "percent_agreement": 0.75,
        "alpha": pytest.approx(2 / 3),
    }
    assert alpha([[0, 0], [0, 0]]) is None  # one value only: undefined, not 1 or NaN
    assert agreement_report([])["alpha"] is None


def test_parse_skips_unknown_choice_and_ignores_bad_rating() -> None:
    report = SyncReport()
    base = {"id": "r1", "user_id": "u1", "updated_at": "t", "status": "submitted"}
    assert _parse({**base, "values": {"choice": {"value": "C"}}}, {}, report) is None
    assert "unknown choice 'C'" in report.skipped[0]
    good = _parse(
        {**base, "values": {"choice": {"value": "tie"}, "rating": {"value": 9}}},
        {"u1": "ann"},
        report,
    )
    assert good is not None and (good["annotator"], good["choice"], good["rating"]) == (
        "ann",
        "tie",
        None,
    )
    discarded = _parse({**base, "status": "discarded", "values": {}}, {}, report)
    assert discarded is not None and discarded["choice"] is None


def _chat(store: Store) -> tuple[int, int, int]:
    """An expert's chat with one reply and one compare candidate: (user, reply, candidate)."""
    user = store.add_user(name="eve", role="expert", password="pw").id
    conversation = store.start_conversation(user_id=user, title="t")
    store.add_user_message(conversation_id=conversation, content=PROMPT[0]["content"])
    ids = [
        store.add_response(conversation_id=conversation, prompt=PROMPT, content=text,
                           model="tiny", adapter_version=None, params={}, latency_ms=1.0,
                           kind=kind)
        for text, kind in (("Unplug it.", "reply"), ("Hold reset 10 s.", "candidate"))
    ]  # fmt: skip
    return user, ids[0], ids[1]


def test_outbox_queues_once_and_picks_undecided_compares(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    first = queue_pair(store, source="generated", prompt=PROMPT, first="a", second="b",
                       metadata={}, rng=random.Random(1))  # fmt: skip
    again = queue_pair(store, source="generated", prompt=PROMPT, first="a", second="b",
                       metadata={})  # fmt: skip
    assert first.created and not again.created and first.external_id == again.external_id
    with pytest.raises(FeedbackError, match="identical"):
        queue_pair(store, source="generated", prompt=PROMPT, first="a", second="a", metadata={})

    user, reply, candidate = _chat(store)
    undecided = store.add_comparison(
        user_id=user, original_response_id=reply, candidate_response_id=candidate,
        original_is_a=True,
    )  # fmt: skip
    assert queue_undecided_comparisons(store) == 1
    assert queue_undecided_comparisons(store) == 0  # queued once
    store.decide_comparison(comparison_id=undecided, user_id=user, choice="A")
    assert store.outbox_counts()["pending"] == 2


def test_thumbs_down_replies_are_offered_once_and_not_when_corrected(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    user, reply, candidate = _chat(store)
    store.rate(response_id=reply, user_id=user, up=False)
    store.rate(response_id=candidate, user_id=user, up=False)
    store.correct(response_id=candidate, user_id=user, content="Hold reset for 10 seconds.")
    found = thumbs_down_to_pair(store)
    assert [f["response_id"] for f in found] == [reply]
    queue_pair(store, source="thumbs-down", prompt=found[0]["prompt"], first=found[0]["content"],
               second="A fresh sample.", first_response_id=reply, metadata={})  # fmt: skip
    assert thumbs_down_to_pair(store) == []


def test_cli_without_argilla_says_what_to_do() -> None:
    runner = CliRunner()
    sync = runner.invoke(app, ["argilla", "sync"])
    assert sync.exit_code != 0 and "tuneloop argilla up" in str(sync.exception)
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    argilla = json.loads(status.output)["argilla"]
    assert argilla["url"] is None and argilla["outbox"]["pending"] == 0


def test_up_and_down_refuse_a_teams_own_argilla(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_ARGILLA_URL", "http://argilla.example.org")
    monkeypatch.setenv("TUNELOOP_ARGILLA_API_KEY", "owner.key.1234")
    for verb in ("up", "down"):
        result = CliRunner().invoke(app, ["argilla", verb])
        assert result.exit_code != 0 and "TUNELOOP_ARGILLA_URL is set" in str(result.exception)
