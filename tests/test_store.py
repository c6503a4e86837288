"""The preference store on real SQLite files: engine, users, chats, privacy.

Also the helpers (`chat`, `rows_of`, `db_url`) the other test_store_* modules import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import text
from sqlmodel import Session, col, select

from feedback.auth.passwords import hash_password, verify_password
from feedback.errors import FeedbackError
from feedback.models import FeedbackTable, Message, Response, User
from feedback.records import UserInfo
from feedback.store import Store

T = TypeVar("T", bound=FeedbackTable)
REPO = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are a careful pharmacist."}


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(db_url(tmp_path / "nested" / "dir" / "tuneloop.db"))


@pytest.fixture
def ann(store: Store) -> UserInfo:
    return store.add_user(name="ann", role="expert", password="s3cret")


def chat(
    store: Store, user: UserInfo, question: str = "Can I take ibuprofen with coffee?"
) -> tuple[int, int, list[dict[str, str]]]:
    """A conversation with one question and one reply; returns (conversation, response, prompt)."""
    conversation = store.start_conversation(user_id=user.id, title=question[:20])
    store.add_user_message(conversation_id=conversation, content=question)
    prompt = [SYSTEM, {"role": "user", "content": question}]
    response = store.add_response(
        conversation_id=conversation,
        prompt=prompt,
        content="No, never.",
        model="SmolLM2-135M",
        adapter_version=None,
        params={"temperature": 0.7, "top_p": 0.9},
        latency_ms=120.5,
        ttft_ms=30.0,
        new_tokens=4,
    )
    return conversation, response, prompt


def rows_of(store: Store, model: type[T]) -> list[T]:
    """Every row of `model`, read straight from the database."""
    with Session(store.engine) as session:
        return list(session.exec(select(model).order_by(col(model.id))))  # type: ignore[attr-defined]


# Engine ------------------------------------------------------------------------------


def test_sqlite_pragmas_on_every_connection(store: Store, tmp_path: Path) -> None:
    assert (tmp_path / "nested" / "dir" / "tuneloop.db").is_file()
    with store.engine.connect() as connection:
        pragma = lambda name: connection.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 5000


def test_in_memory_database_for_quick_experiments() -> None:
    store = Store.open("sqlite://")
    user = store.add_user(name="ann", role="expert", password="pw")
    conversation = store.start_conversation(user_id=user.id, title="t")
    store.add_user_message(conversation_id=conversation, content="hi")
    assert store.counts()["messages"] == 1


def test_passwords_are_argon2_hashes() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
    assert verify_password(hashed, "correct horse")
    assert not verify_password(hashed, "wrong")
    assert not verify_password("not-a-hash", "correct horse")


# Users -------------------------------------------------------------------------------


def test_add_and_authenticate_users(store: Store) -> None:
    ann = store.add_user(name="  ann ", role="expert", password="s3cret")
    assert (ann.name, ann.role) == ("ann", "expert")
    assert ann.created_at.tzinfo is not None
    store.add_user(name="bob", role="annotator", password="pw")
    store.add_user(name="ops", role="operator", password="pw")
    assert store.authenticate(name="ann", password="s3cret") == ann
    assert store.authenticate(name="ann", password="wrong") is None
    assert store.authenticate(name="nobody", password="s3cret") is None
    assert store.get_user("ann") == ann
    assert store.get_user("nobody") is None
    assert [u.name for u in store.list_users()] == ["ann", "bob", "ops"]
    with Session(store.engine) as session:
        stored = session.exec(select(User.password_hash).where(User.name == "ann")).one()
    assert stored.startswith("$argon2id$") and "s3cret" not in stored


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("", "expert", "pw", "name is empty"),
        ("   ", "expert", "pw", "name is empty"),
        ("carl", "admin", "pw", "role 'admin' is unknown"),
        ("carl", "expert", "", "password is empty"),
    ],
)
def test_add_user_rejects_bad_input(
    store: Store, name: str, role: str, password: str, message: str
) -> None:
    with pytest.raises(FeedbackError, match=message):
        store.add_user(name=name, role=role, password=password)
    assert store.list_users() == []


def test_duplicate_user_name(store: Store, ann: UserInfo) -> None:
    with pytest.raises(FeedbackError, match="'ann' already exists; pick another name"):
        store.add_user(name="ann", role="annotator", password="other")
    assert len(store.list_users()) == 1


# Chat --------------------------------------------------------------------------------


def test_conversation_transcript_and_response(store: Store, ann: UserInfo) -> None:
    conversation, response, prompt = chat(store, ann)
    candidate = store.add_response(
        conversation_id=conversation,
        prompt=prompt,
        content="Yes, that is fine.",
        model="SmolLM2-135M",
        adapter_version="v3",
        params={"temperature": 1.0},
        latency_ms=99,
        kind="candidate",
    )
    messages = store.conversation_messages(conversation_id=conversation, user_id=ann.id)
    assert [(m.role, m.content, m.response_id) for m in messages] == [
        ("user", "Can I take ibuprofen with coffee?", None),
        ("assistant", "No, never.", response),
    ]  # the candidate is not part of the transcript
    info = store.response(response_id=response)
    assert info.prompt == prompt
    assert info.params == {"temperature": 0.7, "top_p": 0.9}
    assert (info.model, info.adapter_version, info.kind) == ("SmolLM2-135M", None, "reply")
    assert (info.latency_ms, info.ttft_ms, info.new_tokens, info.error) == (120.5, 30.0, 4, None)
    assert info.created_at.tzinfo is not None
    other = store.response(response_id=candidate)
    assert (other.kind, other.adapter_version, other.ttft_ms) == ("candidate", "v3", None)
    positions = [m.position for m in rows_of(store, Message)]
    assert positions == [0, 1]


def test_response_with_error_is_recorded(store: Store, ann: UserInfo) -> None:
    conversation = store.start_conversation(user_id=ann.id, title="t")
    response = store.add_response(
        conversation_id=conversation,
        prompt=[{"role": "user", "content": "hi"}],
        content="",
        model="m",
        adapter_version=None,
        params={},
        latency_ms=5,
        error="CUDA out of memory",
    )
    assert store.response(response_id=response).error == "CUDA out of memory"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "draft"}, "kind 'draft' is unknown"),
        ({"prompt": [{"role": "robot", "content": "x"}]}, r"prompt\[0\] must be"),
        ({"prompt": "hello"}, "prompt must be a list"),
        ({"params": {"seed": object()}}, "params are not JSON"),
        ({"conversation_id": 999}, "no conversation with id 999"),
    ],
)
def test_add_response_rejects_bad_input(
    store: Store, ann: UserInfo, kwargs: dict, message: str
) -> None:
    conversation = store.start_conversation(user_id=ann.id, title="t")
    call = {
        "conversation_id": conversation,
        "prompt": [{"role": "user", "content": "hi"}],
        "content": "hello",
        "model": "m",
        "adapter_version": None,
        "params": {},
        "latency_ms": 1.0,
        **kwargs,
    }
    with pytest.raises(FeedbackError, match=message):
        store.add_response(**call)
    assert rows_of(store, Response) == []


def test_bad_ids_and_empty_messages(store: Store, ann: UserInfo) -> None:
    with pytest.raises(FeedbackError, match="no user with id 42"):
        store.start_conversation(user_id=42, title="t")
    conversation = store.start_conversation(user_id=ann.id, title="  ")
    assert store.list_conversations(user_id=ann.id)[0].title == "Untitled"
    with pytest.raises(FeedbackError, match="message is empty"):
        store.add_user_message(conversation_id=conversation, content="  \n")
    with pytest.raises(FeedbackError, match="no response with id 7"):
        store.rate(response_id=7, user_id=ann.id, up=True)


def test_conversations_are_private(store: Store, ann: UserInfo) -> None:
    bob = store.add_user(name="bob", role="expert", password="pw")
    first, _, _ = chat(store, ann, "first question")
    second, _, _ = chat(store, ann, "second question")
    bobs, _, _ = chat(store, bob, "bob's question")
    assert [c.id for c in store.list_conversations(user_id=ann.id)] == [second, first]
    assert [c.id for c in store.list_conversations(user_id=bob.id)] == [bobs]
    with pytest.raises(FeedbackError, match=f"conversation {first} is not yours"):
        store.conversation_messages(conversation_id=first, user_id=bob.id)
    with pytest.raises(FeedbackError, match=f"conversation {bobs} is not yours"):
        store.conversation_messages(conversation_id=bobs, user_id=ann.id)
    with pytest.raises(FeedbackError, match="conversation 999 is not yours"):
        store.conversation_messages(conversation_id=999, user_id=ann.id)
