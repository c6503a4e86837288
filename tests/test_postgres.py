"""The store on a real, throwaway PostgreSQL server (Debian's `postgresql` binaries).

The module starts its own cluster on 127.0.0.1 with trust auth in a temp dir and stops
it afterwards; it never touches a system cluster. Skips when the binaries are missing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from feedback.errors import FeedbackError
from feedback.formats import export, import_file
from feedback.models import metadata
from feedback.store import Store
from tests.pgcluster import ClusterUnavailable, throwaway_cluster

pytestmark = pytest.mark.postgres

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Start a cluster; yields the base URL `postgresql+psycopg://postgres@127.0.0.1:PORT`."""
    try:
        with throwaway_cluster() as base:
            yield base
    except ClusterUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture
def url(server: str) -> Iterator[str]:
    """A fresh database on the module's server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrated_schema_matches_models(url: str) -> None:
    store = Store.open(url)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
    Store.open(url)  # migrating again is a no-op
    store.engine.dispose()


def test_store_round_trip(url: str, tmp_path: Path) -> None:
    store = Store.open(url)
    ann = store.add_user(name="ann", role="expert", password="s3cret")
    bob = store.add_user(name="bob", role="annotator", password="pw")
    with pytest.raises(FeedbackError, match="already exists"):
        store.add_user(name="ann", role="expert", password="x")
    assert store.authenticate(name="ann", password="s3cret") == ann
    assert store.authenticate(name="ann", password="nope") is None

    conversation = store.start_conversation(user_id=ann.id, title="ibuprofen")
    store.add_user_message(conversation_id=conversation, content="Can I take ibuprofen?")
    prompt = [
        {"role": "system", "content": "You are a careful pharmacist."},
        {"role": "user", "content": "Can I take ibuprofen?"},
    ]
    reply = store.add_response(
        conversation_id=conversation,
        prompt=prompt,
        content="No, never.",
        model="SmolLM2-135M",
        adapter_version=None,
        params={"temperature": 0.7},
        latency_ms=120.5,
        ttft_ms=20.0,
        new_tokens=3,
    )
    candidate = store.add_response(
        conversation_id=conversation,
        prompt=prompt,
        content="Yes, with food.",
        model="SmolLM2-135M",
        adapter_version="v1",
        params={"temperature": 1.0},
        latency_ms=90.0,
        kind="candidate",
    )
    info = store.response(response_id=reply)
    assert (info.prompt, info.params, info.ttft_ms) == (prompt, {"temperature": 0.7}, 20.0)
    assert info.created_at.tzinfo is not None
    messages = store.conversation_messages(conversation_id=conversation, user_id=ann.id)
    assert [(m.role, m.response_id) for m in messages] == [("user", None), ("assistant", reply)]
    with pytest.raises(FeedbackError, match="is not yours"):
        store.conversation_messages(conversation_id=conversation, user_id=bob.id)

    store.rate(response_id=reply, user_id=ann.id, up=False, reason="wrong")
    store.correct(response_id=reply, user_id=ann.id, content="Yes, with food, short term.")
    assert store.response(response_id=reply).content == "No, never."
    comparison = store.add_comparison(
        user_id=ann.id,
        original_response_id=reply,
        candidate_response_id=candidate,
        original_is_a=False,
    )
    with pytest.raises(FeedbackError, match="belongs to another user"):
        store.decide_comparison(comparison_id=comparison, user_id=bob.id, choice="A")
    store.decide_comparison(comparison_id=comparison, user_id=ann.id, choice="A")
    with pytest.raises(FeedbackError, match="already decided"):
        store.decide_comparison(comparison_id=comparison, user_id=ann.id, choice="B")

    assert import_file(store, DATA / "hh.jsonl").added == 2
    assert import_file(store, DATA / "messages.jsonl").added == 2
    assert import_file(store, DATA / "hh.jsonl").duplicates == 2

    counts = store.counts()
    assert counts["preferences_by_source"] == {"edit": 1, "chat-compare": 1, "import": 2}
    assert (counts["ratings_down"], counts["corrections"], counts["examples"]) == (1, 1, 2)

    dpo = tmp_path / "dpo.jsonl"
    assert export(store, "dpo", dpo) == 4
    rows = [json.loads(line) for line in dpo.read_text(encoding="utf-8").splitlines()]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "Yes, with food."}]
    sft = tmp_path / "sft.jsonl"
    assert export(store, "sft", sft) == 3  # two imported conversations and the correction
    split_total = sum(
        export(store, kind, tmp_path / f"{kind}-{split}.jsonl", split=split)
        for kind in ("sft", "dpo")
        for split in ("train", "heldout")
    )
    assert split_total == 7
    store.engine.dispose()


def test_ratings_during_a_bulk_import_all_land(
    url: str, _isolated_home: Path, tiny_model_dir: Path
) -> None:
    from tests.test_store_load import CLICKS, ROWS, check, database_reasons, ratings_during_import

    _isolated_home.mkdir(parents=True, exist_ok=True)
    result = ratings_during_import(
        _isolated_home, tiny_model_dir, ROWS, CLICKS, TUNELOOP_DATABASE_URL=url
    )
    check(result, ROWS, CLICKS, database_reasons(url))
