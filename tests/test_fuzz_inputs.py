"""Property tests (hypothesis) of two input boundaries: the importers (feedback/formats.py)
and the login form's fields (app/web/login.py). Whatever arrives: no unhandled exception,
never a partial import, and a refusal is one clear line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.web.login import LoginGate, _login_client
from feedback.auth.logins import LoginPolicy, malformed
from feedback.errors import FeedbackError
from feedback.formats import MAX_DEPTH, import_file
from feedback.store import Store

# Text with what breaks databases and parsers mixed in: NUL, lone surrogates, HTML, HH turns.
AWKWARD = st.sampled_from(
    ["\x00", "\ud800", "\udfff", "<b>", "\n\nHuman: ", "\n\nAssistant: ", "\u2028", " ", ""]
)
TEXT = st.lists(st.one_of(st.text(max_size=12), AWKWARD), max_size=4).map("".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)
ROLE = st.sampled_from(["user", "assistant", "system", "tool", ""])
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": TEXT})
# Rows shaped like each format (most nearly valid), plus anything at all.
ROW = st.one_of(
    st.fixed_dictionaries(
        {"prompt": TEXT | st.lists(MESSAGE, max_size=3), "chosen": TEXT, "rejected": TEXT}
    ),
    st.fixed_dictionaries({"chosen": TEXT, "rejected": TEXT}),
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4)}),
    st.dictionaries(TEXT, JSON, max_size=3),
)


def encode(value: object) -> bytes:
    """One JSONL line; lone surrogates travel as JSON escapes, as other tools write them."""
    return json.dumps(value).encode("utf-8") + b"\n"


LINE = st.one_of(
    ROW.map(encode),
    JSON.map(encode),
    st.binary(max_size=40).map(lambda b: b + b"\n"),
    st.just(b"\n"),
    st.integers(MAX_DEPTH - 2, MAX_DEPTH + 40).map(lambda n: b"[" * n + b"]" * n + b"\n"),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    yield Store.open(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'store.db'}")


def stored(store: Store) -> tuple[int, int]:
    counts = store.counts()
    return counts["preferences_total"], counts["examples"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=st.lists(LINE, min_size=1, max_size=6),
    fmt=st.sampled_from(["auto", "trl", "hh", "messages"]),
)
@example(lines=[b'{"prompt": "a\\u0000", "chosen": "b", "rejected": "c"}\n'], fmt="auto")
@example(lines=[b'{"prompt": "a\\ud800", "chosen": "b", "rejected": "c"}\n'], fmt="trl")
@example(lines=[b"[" * 100_000 + b"]" * 100_000 + b"\n"], fmt="auto")
def test_an_import_is_whole_or_refused_in_one_line(
    store: Store, tmp_path: Path, lines: list[bytes], fmt: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(lines))
    before = stored(store)
    try:
        result = import_file(store, path, fmt)
    except FeedbackError as err:
        message = str(err)
        assert message.startswith(str(path)) and "\n" not in message, message
        assert stored(store) == before  # nothing of a refused file was written
        return
    after = stored(store)
    assert sum(after) - sum(before) == result.added
    assert result.added + result.duplicates == sum(
        1 for line in lines if line.decode("utf-8").strip()
    )


# -- the login form's fields ---------------------------------------------------------------

FIELD = st.one_of(
    TEXT,
    st.text(max_size=80),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,70}", fullmatch=True),
    st.integers(60, 2_000_000).map(lambda n: "a" * n),
)


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> LoginGate:
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('login') / 'store.db'}")
    store.add_user(name="erin", role="expert", password="erin-pass")
    policy = LoginPolicy(
        max_failures=1000,
        max_failures_per_address=100_000,
        lockout=timedelta(minutes=1),
        delay_seconds=0,
    )
    return LoginGate(store, policy, allowed_roles=("expert",))


def rows_of(gate: LoginGate) -> set[str]:
    from sqlmodel import select

    from feedback.models import LoginFailure

    with gate.guard.store._read() as session:
        return set(session.exec(select(LoginFailure.key)).all())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=FIELD, password=FIELD, address=st.sampled_from([None, "10.0.0.1", "::1", ""]))
@example(name="erin", password="erin-pass", address="10.0.0.1")
@example(name="erin\x00", password="erin-pass", address=None)
@example(name="\ud800", password="\udfff", address="10.0.0.2")
@example(name="erin", password="pw-\ud800", address=None)  # found by this test: a 500 from Argon2
def test_any_login_fields_get_a_yes_or_no_and_malformed_ones_leave_no_trace(
    gate: LoginGate, name: str, password: str, address: str | None
) -> None:
    async def attempt() -> bool:
        _login_client.set(address)
        return await gate.check(name, password)

    before = rows_of(gate)
    allowed = asyncio.run(attempt())
    assert allowed is (name.strip() == "erin" and password == "erin-pass")
    if malformed(name, password) is not None:
        assert rows_of(gate) == before
