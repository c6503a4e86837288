"""`tuneloop export` files are PII-scrubbed by default, with the same stand-ins as training;
`--raw` writes the store's text as it is. (Argilla's side: tests/test_argilla.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.pii import EMAIL, PHONE, surrogate
from tests.cli import run_cli

NAME, MAIL, TEL, UK_TEL = "Dana Reyes", "dana.reyes@example.org", "415-555-2671", "020 7946 0958"
PAIR = {
    "prompt": [{"role": "user", "content": f"Hi, I'm {NAME}. Mail {MAIL} or ring {UK_TEL}."}],
    "chosen": [{"role": "assistant", "content": "Hi Dana, we will mail you today."}],
    "rejected": [{"role": "assistant", "content": f"Dana, call {TEL}."}],
}


def _export(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, out: Path, *args: str
) -> tuple[dict, list[dict]]:
    code, stdout, err = run_cli(monkeypatch, capsys, "export", *args, "--out", str(out), "--json")
    assert code == 0, err
    return json.loads(stdout), [json.loads(line) for line in out.read_text().splitlines()]


def test_export_is_scrubbed_by_default_and_raw_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from app.config import Settings
    from feedback.store import Store

    monkeypatch.setenv("TUNELOOP_PII_REGION", "GB")  # "020 ..." is a number only in the UK
    source = tmp_path / "pairs.jsonl"
    source.write_text(json.dumps(PAIR) + "\n", encoding="utf-8")
    code, _, err = run_cli(monkeypatch, capsys, "import", str(source), "--format", "trl")
    assert code == 0, err
    store = Store.open(Settings().database)
    user = store.add_user(name="ann", role="expert", password="pw").id
    chat = store.start_conversation(user_id=user, title="t")
    prompt = [{"role": "user", "content": f"This is {NAME}, is my line down?"}]
    reply = store.add_response(
        conversation_id=chat, prompt=prompt, content="No.", model="tiny", adapter_version=None,
        params={}, latency_ms=1.0,
    )  # fmt: skip
    store.rate(response_id=reply, user_id=user, up=False, reason=f"Dana gave {MAIL}: use it")
    stand_in = surrogate("Dana")

    info, [dpo] = _export(monkeypatch, capsys, tmp_path / "dpo.jsonl", "dpo")
    assert info["pii"] == "scrubbed"
    asked = f"Hi, I'm {stand_in}. Mail {EMAIL} or ring {PHONE}."
    assert dpo == {  # one stand-in across prompt, chosen and rejected, as a round trains it
        "prompt": [{"role": "user", "content": asked}],
        "chosen": [{"role": "assistant", "content": f"Hi {stand_in}, we will mail you today."}],
        "rejected": [{"role": "assistant", "content": f"{stand_in}, call {PHONE}."}],
    }  # fmt: skip
    _, [kto] = _export(monkeypatch, capsys, tmp_path / "kto.jsonl", "kto")
    assert kto["prompt"][0]["content"] == f"This is {stand_in}, is my line down?"
    assert kto["reasons"] == [f"{stand_in} gave {EMAIL}: use it"]
    written = (tmp_path / "dpo.jsonl").read_text() + (tmp_path / "kto.jsonl").read_text()
    assert not [s for s in ("Dana", "Reyes", MAIL, TEL, UK_TEL) if s in written]

    info, [raw] = _export(monkeypatch, capsys, tmp_path / "raw.jsonl", "dpo", "--raw")
    assert info["pii"] == "raw" and raw == PAIR
    _, [raw_kto] = _export(monkeypatch, capsys, tmp_path / "raw-kto.jsonl", "kto", "--raw")
    assert raw_kto["reasons"] == [f"Dana gave {MAIL}: use it"]
    # Without --json the line says which it wrote.
    code, stdout, _ = run_cli(monkeypatch, capsys, "export", "sft", "--out", str(tmp_path / "s"))
    assert code == 0 and "PII scrubbed" in stdout
