"""Argilla in the loop, against a REAL local Argilla 2.8 stack (server, worker, redis, osmem).

One stack is started for the whole module (about 30 s) and stopped at the end; each test
uses its own dataset. Annotators act through the endpoints the Argilla UI itself uses
(`/api/v1/token`, `/me/datasets/{id}/records/search`, `/records/{id}/responses`,
`/me/responses/bulk`): annotators get 403 on the owner's record endpoints. The fault test
stops and SIGKILLs parts of the stack, so it runs last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session, func, select

from app.config import Settings
from feedback.argilla import dataset as D
from feedback.argilla import sync as S
from feedback.argilla.outbox import queue_pair
from feedback.argilla.stack import ArgillaError, LocalStack
from feedback.models import Preference
from feedback.models_external import ArgillaPair, ArgillaResponse
from feedback.store import Store
from tests.server import free_port

PASSWORD = "annotate-123"
ROTATE = {"A": "B", "B": "tie", "tie": "A"}


def _missing() -> str | None:
    venv = Settings().argilla_venv
    if not (venv / "bin" / "python").exists():
        return f"the Argilla server venv {venv} is not built; run `bash .ci/setup test`"
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        return "Debian redis-server is not installed; run `bash .ci/setup test`"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


# Every process command line seen while `tuneloop argilla up` ran (what `ps` showed).
COMMAND_LINES: set[str] = set()


def _watch_command_lines(stop: threading.Event) -> None:
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            try:
                COMMAND_LINES.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, UnicodeDecodeError):
                continue
        time.sleep(0.02)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real local stack, started once for this module through the real `tuneloop argilla
    up` (its command lines watched all along), and stopped afterwards."""
    home = tmp_path_factory.mktemp("argilla-stack")
    local = LocalStack(home=home, venv=Settings().argilla_venv, port=free_port())
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_command_lines, args=(stop,), daemon=True)
    watcher.start()
    try:
        up = _cli(home, "argilla", "up", "--json", TUNELOOP_ARGILLA_PORT=str(local.port))
    finally:
        stop.set()
        watcher.join()
    assert up.returncode == 0, up.stderr
    yield local
    local.down()


def _target(stack: LocalStack, name: str, **kw: Any) -> D.Target:
    creds = stack.credentials()
    assert creds is not None
    return D.Target(credentials=creds, dataset=name, min_submitted=2, **kw)


def _store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'store.db'}")


def _queue(store: Store, n: int, tag: str, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [
        queue_pair(
            store,
            source="generated",
            prompt=[{"role": "user", "content": f"{tag} question {i}?"}],
            first=f"{tag} first answer {i}",
            second=f"{tag} second answer {i}",
            metadata={"model": "tiny", "adapter_first": "v1", "adapter_second": "base"},
            rng=rng,
        ).id
        for i in range(n)
    ]


class Annotator:
    """An annotator driving the same HTTP endpoints as the Argilla web UI."""

    def __init__(self, url: str, name: str) -> None:
        token = httpx.post(
            f"{url}/api/v1/token", data={"username": name, "password": PASSWORD}
        ).json()["access_token"]
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def records(self, dataset_id: Any, status: str = "pending") -> list[dict[str, Any]]:
        """Records in this annotator's queue with their response status `status`."""
        out: list[dict[str, Any]] = []
        while True:
            body = {"filters": {"and": [{"type": "terms", "values": [status],
                    "scope": {"entity": "response", "property": "status"}}]}}  # fmt: skip
            r = self.http.post(
                f"/api/v1/me/datasets/{dataset_id}/records/search",
                json=body,
                params={"offset": len(out), "limit": 200, "include": "responses"},
            )
            r.raise_for_status()
            items = [item["record"] for item in r.json()["items"]]
            out += items
            if len(items) < 200:
                return out

    def respond(self, record_id: str, status: str, **values: Any) -> None:
        body = {"status": status, "values": {k: {"value": v} for k, v in values.items()}}
        r = self.http.post(f"/api/v1/records/{record_id}/responses", json=body)
        assert r.status_code == 201, r.text

    def bulk(self, items: list[tuple[str, str]]) -> None:
        """Submit (record id, choice) pairs through the UI's bulk endpoint, 100 at a time."""
        for start in range(0, len(items), 100):
            body = {"items": [{"record_id": rid, "status": "submitted",
                               "values": {"choice": {"value": c}}}
                              for rid, c in items[start : start + 100]]}  # fmt: skip
            r = self.http.post("/api/v1/me/responses/bulk", json=body)
            r.raise_for_status()
            assert not any(i.get("error") for i in r.json()["items"]), r.text


def _annotators(stack: LocalStack, target: D.Target, *names: str) -> list[Annotator]:
    client = D.connect(target)
    for name in names:
        D.ensure_annotator(client, target, name, PASSWORD)
    return [Annotator(stack.url, name) for name in names]


def _index(record: dict[str, Any]) -> int:
    return int(record["fields"]["conversation"][0]["content"].split(" question ")[1][:-1])


def _argilla_ids(target: D.Target, dataset: Any) -> list[str]:
    """Every external id in the dataset, read through the owner's API."""
    creds = target.credentials
    ids: list[str] = []
    with httpx.Client(base_url=creds.url, headers={"X-Argilla-Api-Key": creds.api_key}) as h:
        while True:
            r = h.get(f"/api/v1/datasets/{dataset.id}/records",
                      params={"offset": len(ids), "limit": 1000})  # fmt: skip
            items = r.json()["items"]
            if not items:
                return ids
            ids += [i["external_id"] for i in items]


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        input=env.pop("STDIN", ""),
        env={**os.environ, "TUNELOOP_HOME": str(home), **env},
        timeout=300,
    )


def test_up_is_idempotent_and_credentials_are_private(stack: LocalStack, tmp_path: Path) -> None:
    env = {"TUNELOOP_ARGILLA_PORT": str(stack.port)}
    before = stack.status()
    up = _cli(stack.home, "argilla", "up", "--json", **env)
    assert up.returncode == 0, up.stderr
    after = json.loads(up.stdout)
    assert after["healthy"] and after["running"]
    assert {k: v["pid"] for k, v in after["processes"].items()} == {
        k: v["pid"] for k, v in before["processes"].items()
    }
    assert stat.S_IMODE(stack.credentials_file.stat().st_mode) == 0o600
    # everything `up` created is private, and no secret was ever on a command line
    loose = {
        str(p): oct(stat.S_IMODE(p.lstat().st_mode))
        for p in [stack.root, *stack.root.rglob("*")]
        if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077
    }
    assert not loose, loose
    creds = stack.credentials()
    assert creds is not None and creds.password and COMMAND_LINES
    assert not [c for c in COMMAND_LINES if creds.password in c or creds.api_key in c]
    status = json.loads(_cli(stack.home, "argilla", "status", "--json", **env).stdout)
    assert status["healthy"] and status["memory_mb"] > 0
    external = {"TUNELOOP_ARGILLA_URL": stack.url, "TUNELOOP_ARGILLA_API_KEY": "x" * 12}
    refused = _cli(tmp_path, "argilla", "down", **external)
    assert refused.returncode == 1 and "TUNELOOP_ARGILLA_URL is set" in refused.stderr
    assert stack.status()["healthy"]


def test_200_pairs_two_annotators_majority_ties_agreement(
    stack: LocalStack, tmp_path: Path
) -> None:
    store = _store(tmp_path)
    target = _target(stack, "t-200")
    _queue(store, 200, "t200")
    assert queue_pair(  # queuing the same pair again is a no-op
        store, source="generated", prompt=[{"role": "user", "content": "t200 question 0?"}],
        first="t200 first answer 0", second="t200 second answer 0", metadata={},
    ).created is False  # fmt: skip
    first = S.sync(store, target)
    assert (first.pushed, first.push_failed, first.pulled) == (200, 0, 0)
    dataset = D.ensure_dataset(D.connect(target), target)

    ann1, ann2, ann3 = _annotators(stack, target, "ann1", "ann2", "ann3")
    records = ann1.records(dataset.id)
    assert len(records) == 200
    by_index = {_index(r): r for r in records}
    # ann1: A when i % 4 in (0, 1), B when 2, tie when 3; ann2 agrees except when i % 5 == 0.
    c1 = {i: "A" if i % 4 < 2 else ("B" if i % 4 == 2 else "tie") for i in range(200)}
    c2 = {i: ROTATE[c1[i]] if i % 5 == 0 else c1[i] for i in range(200)}
    for i in range(0, 200, 50):  # a few one by one, as the UI's Submit button does
        ann1.respond(by_index[i]["id"], "submitted", choice=c1[i])
    ann1.bulk([(by_index[i]["id"], c1[i]) for i in range(200) if i % 50])
    ann2.bulk([(by_index[i]["id"], c2[i]) for i in range(200)])
    ann3.respond(by_index[0]["id"], "discarded")
    ann3.respond(by_index[1]["id"], "draft", choice="B")

    pulled = S.sync(store, target)
    assert (pulled.pushed, pulled.pulled, pulled.skipped) == (0, 401, [])
    with Session(store.engine) as s:
        rows = s.exec(select(ArgillaResponse)).all()
        assert sorted((r.annotator, r.status) for r in rows).count(("ann1", "submitted")) == 200
        assert sum(r.annotator == "ann2" and r.status == "submitted" for r in rows) == 200
        assert [(r.annotator, r.status, r.choice) for r in rows if r.annotator == "ann3"] == [
            ("ann3", "discarded", None)
        ]  # the draft is not stored
        pairs = {p.external_id: p for p in s.exec(select(ArgillaPair)).all()}
        decisions = [p.decision for p in pairs.values()]
        # Hand count: 40 splits (i % 5 == 0); of the other 160, i % 4 spreads evenly.
        assert (decisions.count("A"), decisions.count("B")) == (80, 40)
        assert (decisions.count("tie"), decisions.count("split")) == (40, 40)
        assert sum(p.flagged for p in pairs.values()) == 40  # splits: agreement 0.5 < 0.6
        prefs = s.exec(select(Preference).where(Preference.source == "argilla")).all()
        assert (len(prefs), sum(p.tie for p in prefs)) == (160, 40)
        for i in (4, 6):  # decided A and B: chosen is the text shown on that side
            record = by_index[i]
            pair = pairs[record["external_id"]]
            pref = s.get(Preference, pair.preference_id)
            assert pref is not None
            side = "response_a" if c1[i] == "A" else "response_b"
            assert pref.chosen == record["fields"][side]
    assert len([r for r in store.dpo_rows("all") if "t200" in r["prompt"][0]["content"]]) == 120

    report = S.agreement(store)
    # Hand-computed: 160 of 200 pairs agree; nominal alpha with pooled counts A 190,
    # B 110, tie 100 of 400: D_o = 80/400, D_e = 1 - 57800/159600, alpha = 1 - D_o/D_e.
    assert report["percent_agreement"] == 0.8
    assert report["alpha"] == pytest.approx(0.686444, abs=1e-5)
    for name in ("ann1", "ann2"):
        assert report["per_annotator"][name]["percent_agreement"] == 0.8
        assert report["per_annotator"][name]["alpha"] == pytest.approx(0.686444, abs=1e-5)
    assert report["flagged_records"] == 40

    # Incremental: nothing new, nothing written; one new response, one row.
    again = S.sync(store, target)
    assert (again.pulled, again.unchanged) == (0, 401)
    ann3.respond(by_index[2]["id"], "submitted", choice="B", corrected="A better answer 2.")
    once = S.sync(store, target)
    assert (once.pulled, once.corrections) == (1, 1)
    assert any(e["messages"][-1]["content"] == "A better answer 2." for e in store.sft_rows("all"))

    # Idempotence: re-push everything (as after a timeout whose request did succeed).
    with store.engine.begin() as conn:
        conn.execute(update(ArgillaPair).values(status="pending"))
    repush = S.sync(store, target)
    assert (repush.pushed, repush.pulled) == (200, 0)
    ids = _argilla_ids(target, dataset)
    assert len(ids) == len(set(ids)) == 200
    with Session(store.engine) as s:
        assert s.exec(select(func.count()).select_from(ArgillaResponse)).one() == 402


def test_bad_data_is_logged_and_skipped(stack: LocalStack, tmp_path: Path) -> None:
    import argilla as rg

    store = _store(tmp_path)
    target = _target(stack, "t-bad")
    _queue(store, 5, "bad")
    S.sync(store, target)
    dataset = D.ensure_dataset(D.connect(target), target)
    dataset.records.log(  # a record this store never pushed
        [rg.Record(id="someone-else-1", fields={
            "conversation": [{"role": "user", "content": "?"}],
            "response_a": "x", "response_b": "y"})]
    )  # fmt: skip
    victim = next(iter(dataset.records(with_responses=False)))
    dataset.records.delete([victim])
    before = store.counts()
    report = S.sync(store, target)
    assert any("never pushed" in line for line in report.skipped)
    assert any("no longer in Argilla" in line for line in report.skipped)
    assert store.counts() == before


def test_users_add_annotator_creates_the_argilla_account(stack: LocalStack, tmp_path: Path) -> None:
    env = {"TUNELOOP_ARGILLA_URL": stack.url,
           "TUNELOOP_ARGILLA_API_KEY": stack.credentials().api_key}  # type: ignore[union-attr]  # fmt: skip
    out = _cli(tmp_path, "users", "add", "rita", "--role", "annotator", "--json",
               STDIN=PASSWORD + "\n", **env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"log in at {stack.url} as 'rita'" in json.loads(out.stdout)["argilla"]
    token = httpx.post(f"{stack.url}/api/v1/token", data={"username": "rita",
                       "password": PASSWORD})  # fmt: skip
    assert token.status_code == 201 and token.json()["access_token"]
    # Without any Argilla our account is still made, and the message says what to do.
    alone = _cli(tmp_path / "other", "users", "add", "sam", "--role", "annotator",
                 STDIN=PASSWORD + "\n")  # fmt: skip
    assert alone.returncode == 0 and "tuneloop argilla up" in alone.stdout


def test_pairs_generate_queues_and_sync_pushes(
    stack: LocalStack, tmp_path: Path, tiny_model_dir: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(4)))
    env = {"TUNELOOP_MODEL": str(tiny_model_dir), "TUNELOOP_MAX_NEW_TOKENS": "12",
           "TUNELOOP_ARGILLA_URL": stack.url, "TUNELOOP_ARGILLA_DATASET": "t-generate",
           "TUNELOOP_ARGILLA_API_KEY": stack.credentials().api_key}  # type: ignore[union-attr]  # fmt: skip
    home = tmp_path / "home"
    out = _cli(home, "pairs", "generate", "--prompts", str(prompts), "--n", "3", "--json", **env)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["prompts"] == 3 and made["queued"] + made["skipped_identical"] == 3
    synced = _cli(home, "argilla", "sync", "--json", **env)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["pushed"] == made["queued"]
    status = json.loads(_cli(home, "status", "--json", **env).stdout)
    assert status["argilla"]["outbox"]["pushed"] == made["queued"]


def test_serve_syncs_in_the_background_and_pairs_thumbs_down(
    stack: LocalStack, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from tests.server import serve

    home = tmp_path / "home"
    store = Store.open(f"sqlite:///{home / 'tuneloop.db'}")
    _queue(store, 3, "serve")
    user = store.add_user(name="eve", role="expert", password="pw").id
    chat = store.start_conversation(user_id=user, title="t")
    prompt = [{"role": "user", "content": "Is my router broken?"}]
    store.add_user_message(conversation_id=chat, content=prompt[0]["content"])
    reply = store.add_response(conversation_id=chat, prompt=prompt, content="Yes.", model="tiny",
                               adapter_version=None, params={}, latency_ms=1.0)  # fmt: skip
    store.rate(response_id=reply, user_id=user, up=False)
    env = {"TUNELOOP_ARGILLA_URL": stack.url, "TUNELOOP_ARGILLA_DATASET": "t-serve",
           "TUNELOOP_ARGILLA_API_KEY": stack.credentials().api_key,  # type: ignore[union-attr]
           "TUNELOOP_ARGILLA_SYNC_SECONDS": "1", "TUNELOOP_MAX_NEW_TOKENS": "8"}  # fmt: skip
    with serve(home, model=str(tiny_model_dir), **env):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with Session(store.engine) as s:
                pairs = s.exec(select(ArgillaPair)).all()
            if len(pairs) == 4 and all(p.status == "pushed" for p in pairs):
                break
            time.sleep(1)
    assert sorted(p.source for p in pairs) == ["generated"] * 3 + ["thumbs-down"]
    assert all(p.status == "pushed" for p in pairs), [p.last_error for p in pairs]
    down = next(p for p in pairs if p.source == "thumbs-down")
    assert (down.first, down.first_response_id) == ("Yes.", reply)


def test_annotators_see_scrubbed_pairs_and_rankings_come_back(
    stack: LocalStack, tmp_path: Path
) -> None:
    from feedback.pii import EMAIL, PHONE, surrogate

    home = tmp_path / "home"
    store = Store.open(f"sqlite:///{home / 'tuneloop.db'}")
    question = "Hi, I'm Dana Reyes. Mail dana.reyes@example.org or ring 020 7946 0958."
    first, second = "Hi Dana, we will email you today.", "Dana, please call 415-555-2671."
    queue_pair(store, source="generated", prompt=[{"role": "user", "content": question}],
               first=first, second=second, metadata={"model": "tiny"})  # fmt: skip
    env = {"TUNELOOP_ARGILLA_URL": stack.url, "TUNELOOP_ARGILLA_DATASET": "t-pii",
           "TUNELOOP_ARGILLA_API_KEY": stack.credentials().api_key,  # type: ignore[union-attr]
           "TUNELOOP_ARGILLA_MIN_SUBMITTED": "1",
           "TUNELOOP_PII_REGION": "GB"}  # "020 ..." is a phone number only in the UK  # fmt: skip
    pushed = _cli(home, "argilla", "sync", "--json", **env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["pushed"] == 1

    target = _target(stack, "t-pii")
    (annotator,) = _annotators(stack, target, "pia")
    dataset = D.ensure_dataset(D.connect(target), target)
    [record] = annotator.records(dataset.id)
    fields = record["fields"]
    seen = json.dumps(fields)
    assert not [s for s in ("Dana", "Reyes", "example.org", "7946", "2671") if s in seen]
    stand_in = surrogate("Dana")  # one stand-in in the question and in both replies
    assert fields["conversation"][0]["content"] == (
        f"Hi, I'm {stand_in}. Mail {EMAIL} or ring {PHONE}."
    )
    shown_first = f"Hi {stand_in}, we will email you today."
    assert {fields["response_a"], fields["response_b"]} == {
        shown_first, f"{stand_in}, please call {PHONE}."
    }  # fmt: skip
    side = "A" if fields["response_a"] == shown_first else "B"
    # The annotator picks the first reply and "corrects" it by copying it as shown.
    annotator.respond(record["id"], "submitted", choice=side, corrected=shown_first)

    pulled = _cli(home, "argilla", "sync", "--json", **env)
    assert pulled.returncode == 0, pulled.stderr
    report = json.loads(pulled.stdout)
    assert (report["pulled"], report["preferences"], report["corrections"]) == (1, 1, 1)
    with Session(store.engine) as s:
        pair = s.exec(select(ArgillaPair)).one()
        assert (pair.external_id, pair.decision) == (record["external_id"], side)
        prefs = s.exec(select(Preference).where(Preference.source == "argilla")).all()
    # The ranking lands on the raw pair the store kept; the copy of the shown first reply
    # is not a pair against that reply, only against the second.
    assert sorted((p.chosen, p.rejected) for p in prefs) == sorted(
        [(first, second), (shown_first, second)]
    )
    assert json.loads(pair.prompt_json)[0]["content"] == question


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.mark.browser
def test_annotator_ranks_a_pair_in_the_real_argilla_ui(stack: LocalStack, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    store = _store(tmp_path)
    target = _target(stack, "t-browser", min_agreement=0.0)
    _queue(store, 1, "browser")
    S.sync(store, target)
    _annotators(stack, target, "browsy")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{stack.url}/sign-in")
            page.fill("input[name=Username]", "browsy")
            page.fill("input[name=Password]", PASSWORD)
            page.locator("button[type=submit]").click()
            page.get_by_text("t-browser").first.click()
            expect(page.get_by_text("browser question 0?")).to_be_visible(timeout=30_000)
            page.get_by_text("B is better").click()
            page.get_by_role("button", name="Submit").click()
            expect(page.get_by_text("browser question 0?")).to_be_hidden(timeout=30_000)
        finally:
            browser.close()
    report = S.sync(store, target)
    assert report.pulled == 1
    with Session(store.engine) as s:
        row = s.exec(select(ArgillaResponse)).one()
    assert (row.annotator, row.status, row.choice) == ("browsy", "submitted", "B")
    assert row.corrected is None


def test_faults_unreachable_then_sigkill_mid_sync(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    target = _target(stack, "t-faults")
    _queue(store, 20, "early")
    S.sync(store, target)
    dataset = D.ensure_dataset(D.connect(target), target)
    ann1, ann2 = _annotators(stack, target, "fa1", "fa2")
    for ann in (ann1, ann2):
        ann.bulk([(r["id"], "A") for r in ann.records(dataset.id)[:10]])

    # Argilla unreachable while pairs are queued (nothing listens at its address): queuing
    # works, sync fails in plain words, nothing is lost. A restart of the real server, data
    # kept, is the kill below.
    _queue(store, 200, "late", seed=8)
    gone = dataclasses.replace(
        target,
        credentials=dataclasses.replace(target.credentials, url=f"http://127.0.0.1:{free_port()}"),
    )
    with pytest.raises(ArgillaError):
        S.sync(store, gone)
    with Session(store.engine) as s:
        assert len(s.exec(select(ArgillaPair.external_id)).all()) == 220

    # SIGKILL the server in the middle of a push, then bring it back and sync again. The
    # kill follows the last of the 200 records being built for the push (the real
    # `to_record`, watched): a fixed sleep lost the race when the push happened to be fast.
    errors: list[BaseException] = []
    built = threading.Event()
    to_record, seen = S.to_record, [0]

    def watched(pair: Any, pii_region: str = "US") -> Any:
        record = to_record(pair, pii_region)
        seen[0] += 1
        if seen[0] == 200:
            built.set()
        return record

    monkeypatch.setattr(S, "to_record", watched)

    def run() -> None:
        try:
            S.sync(store, target)
        except BaseException as err:  # noqa: BLE001 - collected for the assertion below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    assert built.wait(timeout=120), "the sync never built the queued records"
    server = json.loads(stack.state_file.read_text())["processes"]["server"]["pid"]
    os.killpg(server, signal.SIGKILL)
    thread.join(timeout=120)
    assert errors, "the kill should have interrupted the sync"
    stack.up()  # sees the dead server, restarts the stack cleanly
    assert len(Annotator(stack.url, "fa1").records(dataset.id, "submitted")) == 10
    S.sync(store, target)
    final = S.sync(store, target)
    assert final.pushed == 0 and final.skipped == []
    ids = _argilla_ids(target, dataset)
    with Session(store.engine) as s:
        ours = set(s.exec(select(ArgillaPair.external_id)).all())
        statuses = set(s.exec(select(ArgillaPair.status)).all())
        responses = s.exec(select(ArgillaResponse.argilla_id)).all()
    assert len(ids) == len(set(ids)) == 220 and set(ids) == ours
    assert statuses == {"pushed"}
    assert len(responses) == len(set(responses)) == 20


def test_a_winner_rated_good_in_argilla_becomes_an_sft_example(
    stack: LocalStack, tmp_path: Path
) -> None:
    """Through `tuneloop argilla sync` and `tuneloop export sft`: the better reply of a pair
    rated 5 and 4 by the annotators who chose it trains as an SFT row; one rated 2 and 3,
    one rated well but corrected, and one that tied do not (they stay DPO rows or nothing)."""
    env = {"TUNELOOP_ARGILLA_URL": stack.url, "TUNELOOP_ARGILLA_DATASET": "t-rating",
           "TUNELOOP_ARGILLA_API_KEY": stack.credentials().api_key}  # type: ignore[union-attr]  # fmt: skip
    home = tmp_path / "home"
    store = Store.open(f"sqlite:///{home / 'tuneloop.db'}")
    _queue(store, 4, "rated")
    assert json.loads(_cli(home, "argilla", "sync", "--json", **env).stdout)["pushed"] == 4
    target = _target(stack, "t-rating")
    ann1, ann2 = _annotators(stack, target, "rater1", "rater2")
    dataset = D.ensure_dataset(D.connect(target), target)
    by_index = {_index(r): r for r in ann1.records(dataset.id)}
    votes = {  # pair: (choice, (rating1, rating2), correction by rater2)
        0: ("A", (5, 4), None),
        1: ("B", (2, 3), None),
        2: ("A", (5, 5), "What it should have said."),
        3: ("tie", (5, 5), None),
    }
    for i, (choice, (r1, r2), corrected) in votes.items():
        ann1.respond(by_index[i]["id"], "submitted", choice=choice, rating=r1)
        extra = {"corrected": corrected} if corrected else {}
        ann2.respond(by_index[i]["id"], "submitted", choice=choice, rating=r2, **extra)
    pulled = _cli(home, "argilla", "sync", "--json", **env)
    assert pulled.returncode == 0, pulled.stderr
    out = tmp_path / "sft.jsonl"
    exported = _cli(home, "export", "sft", "--out", str(out), **env)
    assert exported.returncode == 0, exported.stderr
    answers = [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()]
    shown = {i: by_index[i]["fields"] for i in votes}
    assert shown[0]["response_a"] in answers  # rated good by both who chose it
    assert shown[1]["response_b"] not in answers and shown[1]["response_a"] not in answers
    assert shown[2]["response_a"] not in answers and "What it should have said." in answers
    assert shown[3]["response_a"] not in answers and shown[3]["response_b"] not in answers
