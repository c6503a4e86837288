"""The store on a real, throwaway PostgreSQL server (Debian's `postgresql` binaries).

The module starts its own cluster on 127.0.0.1 with trust auth in a temp dir and stops
it afterwards; it never touches a system cluster. Skips when the binaries are missing.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
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

pytestmark = pytest.mark.postgres

DATA = Path(__file__).resolve().parent / "data"


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with initdb and pg_ctl."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Start a cluster; yields the base URL `postgresql+psycopg://postgres@127.0.0.1:PORT`."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="tuneloop-pg-")
    if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(
                "running as root but there is no `postgres` user: apt-get install postgresql"
            )
        os.chown(root, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -F"
        run(
            str(bin_dir / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"
        )
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {err.stderr.decode(errors='replace')}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


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
