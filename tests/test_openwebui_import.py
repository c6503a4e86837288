"""Open WebUI's feedback export into the store, on an export recorded from a real Open WebUI
0.12.4 (tests/data/openwebui_export.json; how it was made: tests/data/openwebui_export.md).

The recording: one user, one chat; reply 1 👍 score 8; reply 2 👎 "Not helpful — It ignores
the receipt"; reply 2 regenerated as reply 3, 👍 score 9 (so 3 is picked over 2).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from feedback.errors import FeedbackError
from feedback.openwebui import judged, parse_export, parse_text, picks
from feedback.openwebui_sync import apply
from feedback.store import Store
from tests.cli import run_cli

EXPORT = Path(__file__).parent / "data" / "openwebui_export.json"
DANA = "68b1d53f-d873-4021-9a8e-1ed1a5f9df35"


def export() -> list[dict[str, Any]]:
    return list(json.loads(EXPORT.read_text()))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'feedback.db'}")


def test_the_mapping_reads_thumbs_reasons_scores_and_the_conversation() -> None:
    ratings = {r.message_id[:8]: r for r in parse_text(EXPORT.read_text(), "export.json")}
    assert sorted(ratings) == ["4c7f9690", "5a461267", "e1f09c35"]
    first, down, again = ratings["e1f09c35"], ratings["4c7f9690"], ratings["5a461267"]
    assert (first.up, first.score, first.reason) == (True, 8, None)
    reason = "Not helpful — It ignores the receipt"
    assert (down.up, down.score, down.reason) == (False, None, reason)
    assert (again.up, again.score) == (True, 9)
    assert {r.user_ref for r in ratings.values()} == {DANA}
    assert [m["role"] for m in down.prompt] == ["user", "assistant", "user"]
    assert down.prompt == again.prompt and down.parent_id == again.parent_id
    assert first.prompt == [{"role": "user", "content": "How do I return a damaged kettle?"}]


def test_two_rated_siblings_make_one_pick_of_the_better() -> None:
    made = picks([judged(r) for r in parse_export(export())])
    assert len(made) == 1
    assert made[0].chosen.message_id.startswith("5a461267")
    assert made[0].rejected.message_id.startswith("4c7f9690")


def test_equal_siblings_make_no_pick() -> None:
    entries = export()
    for e in entries:
        e["data"]["rating"] = 1
        e["data"]["details"] = {"rating": 7}
    assert picks([judged(r) for r in parse_export(entries)]) == []


def test_import_brings_the_conversation_in_and_exports_exactly_its_rows(store: Store) -> None:
    report = apply(store, parse_export(export()))
    assert (report.entries, report.brought_in, report.picks, report.skipped) == (3, 3, 1, 0)
    dana = store.get_user(f"openwebui-{DANA}")
    assert dana is not None and dana.role == "expert"
    assert store.authenticate(name=dana.name, password="") is None  # no login for it
    conversations = store.list_conversations(user_id=dana.id)
    assert len(conversations) == 1  # one chat, one conversation
    transcript = store.conversation_messages(conversation_id=conversations[0].id, user_id=dana.id)
    assert [m.role for m in transcript] == ["user", "assistant", "user", "assistant"]
    sft = list(store.sft_rows())
    kto = list(store.kto_rows())
    dpo = list(store.dpo_rows())
    # 👍 replies train as SFT; the 👎 reply and its regeneration train as the pair, so only
    # the first reply (no partner) is a KTO row.
    assert [r["messages"][-1]["content"][:11] for r in sft] == ["arveryood l", "questionsil"]
    assert [(r["completion"][0]["content"][:11], r["label"]) for r in kto] == [
        ("arveryood l", True)
    ]
    assert [(r["chosen"][0]["content"][:11], r["rejected"][0]["content"][:11]) for r in dpo] == [
        ("questionsil", "erhavepper ")
    ]
    assert [m["content"] for m in dpo[0]["prompt"]][::2] == [
        "How do I return a damaged kettle?",
        "And if I lost the receipt?",
    ]


def test_a_second_import_adds_nothing(store: Store) -> None:
    apply(store, parse_export(export()))
    before = store.counts()
    again = apply(store, parse_export(export()))
    assert (again.unchanged, again.brought_in, again.rated, again.picks) == (3, 0, 0, 0)
    assert store.counts() == before


def test_a_changed_thumb_is_applied_once_and_the_latest_counts(store: Store) -> None:
    apply(store, parse_export(export()))
    entries = export()
    first = next(e for e in entries if e["meta"]["message_id"].startswith("e1f09c35"))
    first["data"]["rating"] = -1
    first["data"]["comment"] = "on second thoughts, wrong"
    first["updated_at"] += 5
    report = apply(store, parse_export(entries))
    # the reply is in the store now: rated, not brought in again
    assert (report.rated, report.unchanged) == (1, 2)
    counts = store.counts()
    assert (counts["ratings_up"], counts["ratings_down"]) == (1, 2)
    kto = list(store.kto_rows())
    assert [(r["label"], r.get("reasons")) for r in kto] == [(False, ["on second thoughts, wrong"])]


def test_a_rating_already_given_is_not_counted_twice(store: Store) -> None:
    """Whichever way a thumb arrived first (here: a first import), the same thumb again
    from another entry adds no rating row."""
    apply(store, parse_export(export()))
    rows_before = store.counts()
    entries = [copy.deepcopy(e) for e in export() if e["meta"]["message_id"].startswith("e1f09c35")]
    entries[0]["id"] = "another-feedback-id"
    apply(store, parse_export(entries))
    assert store.counts() == rows_before


def test_an_entry_without_a_snapshot_is_skipped_with_a_reason(store: Store) -> None:
    entries = export()[:1]
    entries[0]["snapshot"] = None
    report = apply(store, parse_export(entries))
    assert report.skipped == 1 and "no snapshot" in report.skipped_reasons[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}', "is a JSON array"),
        ("[1]", "entry 0 is not a JSON object"),
        ("[{", "export.json:1: not JSON"),
        (
            '[{"id": "x", "user_id": "u", "data": {"rating": "up"}, '
            '"meta": {"chat_id": "c", "message_id": "m"}}]',
            "data.rating must be 1 or -1",
        ),
    ],
)
def test_a_malformed_export_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        parse_text(text, "export.json")


# -- through the command line -----------------------------------------------------------------


def test_tuneloop_import_reads_the_export_and_a_second_import_adds_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "import", str(EXPORT), "--json")
    assert code == 0, err
    first = json.loads(out)
    assert (first["format"], first["brought_in"], first["picks"]) == ("openwebui", 3, 1)
    code, out, _ = run_cli(monkeypatch, capsys, "import", str(EXPORT), "--format", "openwebui")
    assert code == 0
    assert "3 already here" in out and "0 new picks" in out
    code, out, _ = run_cli(monkeypatch, capsys, "status", "--json")
    counts = json.loads(out)["counts"]
    assert (counts["ratings_up"], counts["ratings_down"], counts["conversations"]) == (2, 1, 1)


def test_a_bad_export_is_refused_in_one_line_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x", "meta": {"chat_id": "c", "message_id": "m"}, "data": 5}]')
    code, out, err = run_cli(monkeypatch, capsys, "import", str(bad), "--format", "openwebui")
    assert code == 1
    assert err.strip().count("\n") == 0 and "bad.json: entry 0" in err


def test_sync_needs_a_url_and_reads_the_token_only_from_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "openwebui", "sync")
    assert code == 1 and "TUNELOOP_OPENWEBUI_URL" in err
    token = tmp_path / "token"
    token.write_text("sk-secret-admin-token\n")
    token.chmod(0o644)
    monkeypatch.setenv("TUNELOOP_OPENWEBUI_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TUNELOOP_OPENWEBUI_TOKEN_FILE", str(token))
    code, _, err = run_cli(monkeypatch, capsys, "openwebui", "sync")
    assert code == 1 and "chmod 600" in err
    token.chmod(0o600)
    code, out, err = run_cli(monkeypatch, capsys, "openwebui", "sync", "--json")
    assert code == 1 and "cannot be reached" in json.loads(out)["error"]
    assert "sk-secret" not in out + err
