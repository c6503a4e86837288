"""Chat and feedback actions (app/serving/chat.py) on the tiny model and a real SQLite store."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from app.serving.chat import ChatService
from app.serving.conversation import (
    COMPARE_BASE,
    COMPARE_SAMPLE,
    ChatError,
    ChatState,
    Comparison,
)
from app.serving.engine import ChatEngine, SamplingParams
from feedback.errors import FeedbackError
from feedback.store import Store
from training.registry import Registry

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, top_p=1.0)


@pytest.fixture
def deployment(tiny_model_dir: Path, tmp_path: Path):
    """A service over the tiny model, a registry with one adapter version, a real store."""
    from tests.tiny import build_tiny_adapter

    registry = Registry(tmp_path / "adapters")
    registry.register("v1", build_tiny_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    engine = ChatEngine(tiny_model_dir, registry, system_prompt="Be brief.", context_tokens=256)
    db = tmp_path / "t.db"
    store = Store.open(f"sqlite:///{db}")
    service = ChatService(
        engine=engine,
        store=store,
        params=GREEDY,
        compare_temperature=1.0,
        max_message_chars=200,
        versions=registry.versions,
    )
    expert = store.add_user(name="erin", role="expert", password="pw-erin-secret")
    yield service, expert, db, registry
    engine.close()


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def chat(service: ChatService, user, state: ChatState, text: str) -> list[str]:
    return list(service.send(user, state, text))


def test_send_streams_and_records_message_and_response(deployment) -> None:
    service, expert, db, _ = deployment
    state = ChatState()
    partials = chat(service, expert, state, "hello there")
    assert len(partials) >= 2, "the reply should arrive in several pieces"
    assert partials[-1] == state.turns[-1].content
    assert [t.role for t in state.turns] == ["user", "assistant"]
    msgs = rows(db, "select role, content from messages order by position")
    assert msgs == [("user", "hello there"), ("assistant", partials[-1])]
    ((model, adapter, params, prompt, latency),) = rows(
        db, "select model, adapter_version, params_json, prompt_json, latency_ms from responses"
    )
    assert adapter is None and model
    assert json.loads(params)["max_new_tokens"] == 12
    sent = json.loads(prompt)
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1] == {"role": "user", "content": "hello there"}
    assert latency > 0


def test_bad_messages_are_refused_and_nothing_is_recorded(deployment) -> None:
    service, expert, db, _ = deployment
    state = ChatState()
    chat(service, expert, state, "first question")
    before = rows(db, "select count(*) from messages")
    for bad in ["", "   ", "x" * 201]:
        with pytest.raises(ChatError):
            chat(service, expert, state, bad)
    assert rows(db, "select count(*) from messages") == before
    assert len(state.turns) == 2


def test_model_failure_keeps_the_conversation(deployment) -> None:
    """A message too long for the model's window: a clear error, earlier turns intact."""
    service, expert, db, _ = deployment
    state = ChatState()
    chat(service, expert, state, "short one")
    service.max_message_chars = 100_000
    with pytest.raises(ChatError, match="could not answer"):
        chat(service, expert, state, "word " * 2000)
    assert rows(db, "select count(*) from responses") == [(1,)]
    assert rows(db, "select count(*) from messages where role='user'") == [(2,)]
    # and the chat goes on afterwards
    chat(service, expert, state, "still there?")
    assert state.turns[-1].role == "assistant"


def test_thumbs_with_reason(deployment) -> None:
    service, expert, db, _ = deployment
    state = ChatState()
    chat(service, expert, state, "rate me")
    assert "👎" in service.rate(expert, state, None, up=False, reason="wrong policy")
    service.rate(expert, state, 1, up=True)
    assert rows(db, "select up, reason from ratings order by id") == [
        (0, "wrong policy"),
        (1, None),
    ]
    with pytest.raises(ChatError):
        service.rate(expert, state, 0, up=True)  # a user message is not a reply


def test_edit_keeps_original_and_makes_a_pair(deployment) -> None:
    service, expert, db, _ = deployment
    state = ChatState()
    chat(service, expert, state, "fix me")
    original = state.turns[-1].content
    service.correct(expert, state, None, "The answer I wanted.")
    assert rows(db, "select content from responses") == [(original,)]
    assert rows(db, "select content from corrections") == [("The answer I wanted.",)]
    assert rows(db, "select chosen, rejected, source from preferences") == [
        ("The answer I wanted.", original, "edit")
    ]
    with pytest.raises(ChatError):
        service.correct(expert, state, None, "  ")


@pytest.mark.parametrize("against", [COMPARE_SAMPLE, COMPARE_BASE, "v1"])
def test_compare_and_pick(deployment, against: str) -> None:
    service, expert, db, _ = deployment
    state = ChatState()
    chat(service, expert, state, "compare this")
    original = state.turns[-1].content
    items = list(service.compare(expert, state, None, against, rng=random.Random(3)))
    pair = items[-1]
    assert isinstance(pair, Comparison)
    assert original in (pair.a, pair.b)
    ((original_is_a,),) = rows(db, "select original_is_a from comparisons")
    assert bool(original_is_a) == (pair.a == original)
    ((adapter,),) = rows(db, "select adapter_version from responses where kind='candidate'")
    assert adapter == ("v1" if against == "v1" else None)
    service.pick(expert, pair.comparison_id, "B")
    ((chosen, rejected, tie, source),) = rows(
        db, "select chosen, rejected, tie, source from preferences"
    )
    assert (chosen, rejected, tie, source) == (pair.b, pair.a, 0, "chat-compare")


def test_compare_order_is_randomised_and_tie_recorded(deployment) -> None:
    service, expert, db, _ = deployment
    state = ChatState()
    chat(service, expert, state, "again")
    original = state.turns[-1].content
    for seed in range(8):
        pair = list(service.compare(expert, state, None, "v1", rng=random.Random(seed)))[-1]
        ((shown_first,),) = rows(
            db,
            "select r.content from comparisons c join responses r on r.id = c.response_a_id "
            f"where c.id = {pair.comparison_id}",
        )
        assert pair.a == shown_first
    orders = {bool(x) for (x,) in rows(db, "select original_is_a from comparisons")}
    assert orders == {True, False}, "A/B order must vary"
    # the original is on the side the row says
    for is_a, a_text in rows(
        db,
        "select c.original_is_a, r.content from comparisons c "
        "join responses r on r.id = c.response_a_id",
    ):
        assert (a_text == original) or not is_a
    service.pick(expert, pair.comparison_id, "tie")
    assert rows(db, "select tie from preferences") == [(1,)]


def test_users_do_not_see_each_others_conversations(deployment) -> None:
    service, expert, _, _ = deployment
    other = service.store.add_user(name="olga", role="operator", password="pw-olga-secret")
    state = ChatState()
    chat(service, expert, state, "private question")
    assert [cid for _, cid in service.conversations(expert)] == [state.conversation_id]
    assert service.conversations(other) == []
    with pytest.raises(ChatError):
        service.open(other, state.conversation_id)
    reopened = service.open(expert, state.conversation_id)
    assert [t.content for t in reopened.turns] == [t.content for t in state.turns]
    assert reopened.turns[-1].response_id == state.turns[-1].response_id


def test_chat_is_for_active_experts_and_operators(deployment) -> None:
    service, _, _, _ = deployment
    service.store.add_user(name="ann", role="annotator", password="pw-ann-secret")
    assert service.user("erin").name == "erin"
    with pytest.raises(ChatError, match="Argilla"):
        service.user("ann")
    with pytest.raises(ChatError):
        service.user("nobody")
    service.store.set_user_status(name="erin", status="disabled")
    with pytest.raises(ChatError, match="disabled"):
        service.user("erin")


def test_user_strings_are_inert_and_limited(deployment) -> None:
    service, expert, _, _ = deployment
    state = ChatState()
    chat(service, expert, state, "rate me")
    saved = service.rate(expert, state, None, up=False, reason="<img src=x onerror=alert(1)>")
    assert saved == "Saved 👎 (<img src=x onerror=alert(1)>)"  # plain text; the page escapes it
    with pytest.raises(ChatError, match="the limit is 1,000"):
        service.rate(expert, state, None, up=False, reason="x" * 100_000)
    for name in ("<b>bold</b>", "a b", "x" * 65, "../admin"):
        with pytest.raises(FeedbackError, match="not allowed"):
            service.store.add_user(name=name, role="expert", password="long-enough")


def test_corrupted_versions_are_not_offered_and_errors_show_no_paths(deployment) -> None:
    from app.serving.adapters import UsableVersions
    from app.serving.conversation import without_paths

    service, expert, _, registry = deployment
    usable = UsableVersions(registry)
    assert usable() == ["v1"]
    weights = next(p for p in registry.path("v1").iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    assert usable() == []
    service._versions = usable
    assert "v1" not in service.compare_choices()
    state = ChatState()
    chat(service, expert, state, "compare me")
    with pytest.raises(ChatError) as refused:
        list(service.compare(expert, state, None, against="v1"))
    assert str(registry.root) not in str(refused.value), str(refused.value)
    assert without_paths("no /srv/x/adapters/v1/adapter.bin here") == "no adapter.bin here"
