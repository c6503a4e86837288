"""The store under load, through a real `tuneloop serve` (tiny model: the store is measured).

1. A bulk `tuneloop import` of N pairs alone, then another N while 8 simulated experts
   rate, correct and pick (compare, then A/B) as fast as the page answers them and `serve`
   syncs with a real local Argilla (started with `tuneloop argilla up` in the run's home):
   `serve` syncs in the background, and as the import starts a backlog of pairs is queued
   and `tuneloop argilla sync` pushes it while the import runs.
   Reports failed actions (no "Saved" acknowledgement), lost ones (acknowledged but not
   stored), p50/p95 click-to-acknowledgement, the import's speed under load / alone (and
   its threads' time on a CPU and waiting for one, from /proc: what slowed it), and what
   the sync pushed meanwhile. The experts use a lean page client (`bench/page_client.py`).
2. A login storm: 160 concurrent wrong passwords (the per-address lockout raised out of the
   way, so every one is a real Argon2 check: the worst case, many addresses) while
   logged-in users keep loading the page's config; p50/p95 of their requests.

Both on SQLite and on a throwaway PostgreSQL cluster (Debian's binaries).

    .venv/bin/python -m bench.store_load                          # 200k rows, both databases
    .venv/bin/python -m bench.store_load --rows 50000 --db sqlite --no-storm
    .venv/bin/python -m bench.store_load --no-argilla   # without the Argilla stack (faster)
    .venv/bin/python -m bench.store_load --db sqlite --no-storm --model DIR  # a real model's
                                                        # decoding competes for the CPU too
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from bench.load_parts import (  # noqa: E402 - after the environment above
    argilla_up,
    children_cpu_s,
    machine_cpu_s,
    outbox,
    process_cpu_s,
    queue_backlog,
    schedstat_until_exit,
)
from bench.record import write_result  # noqa: E402

FEEDBACK_EVENTS = ("rate_down", "correct", "pick_A")  # the acknowledged actions' endpoints

EXPERTS = 8
# Pairs queued for Argilla when the loaded import starts; `argilla sync` pushes them meanwhile.
SYNC_BACKLOG = 300


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_pairs(path: Path, n: int, tag: str) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            row = {
                "prompt": f"[{tag}] Customer {i} asks: my router shows a red light, what now?",
                "chosen": f"Restart it; if the light stays red, we send an engineer ({i}).",
                "rejected": f"Buy a new one ({i}).",
            }
            out.write(json.dumps(row) + "\n")
    return path


def run_import(home: Path, env: dict[str, str], data: Path) -> tuple[float, dict[str, Any]]:
    """`tuneloop import --json` of `data`: (seconds, its result plus `sched`: the seconds its
    threads ran on a CPU and waited for one, from /proc's schedstat; where a slower import
    under load spent its extra time: waiting for a CPU, or for locks and I/O)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "import", str(data), "--json"],
        env={**os.environ, "TUNELOOP_HOME": str(home), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sched = {"on_cpu_s": 0.0, "runqueue_wait_s": 0.0}
    reader = threading.Thread(target=lambda: sched.update(schedstat_until_exit(proc.pid)))
    reader.start()
    out, err = proc.communicate()
    took = time.perf_counter() - start
    reader.join()
    if proc.returncode:
        raise SystemExit(f"import failed: {err.strip()}")
    return took, {**json.loads(out), "sched": sched}


class Expert(threading.Thread):
    """One expert's session: a chat, then rate / correct / compare+pick until told to stop."""

    def __init__(self, url: str, name: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.name, self.stop = url, name, stop
        # (when it was acknowledged, seconds from click to acknowledgement)
        self.latencies: dict[str, list[tuple[float, float]]] = {
            kind: [] for kind in ("rate", "correct", "pick")
        }
        self.acked = {"rate": 0, "correct": 0, "pick": 0}
        self.failed: list[str] = []

    def _act(self, kind: str, client: Any, *args: Any, api_name: str) -> None:
        start = time.perf_counter()
        try:
            reply = client.predict(*args, api_name=api_name)
        except Exception as err:  # a transport or server error is a failed action too
            self.failed.append(f"{kind}: {type(err).__name__}: {err}"[:200])
            return
        text = str(reply[0] if isinstance(reply, tuple | list) else reply)
        if text.startswith("Saved"):
            now = time.perf_counter()
            self.latencies[kind].append((now, now - start))
            self.acked[kind] += 1
        else:
            self.failed.append(f"{kind}: {text[:200]}")

    def connect(self) -> None:
        """Log in and chat once (one expert after another: logins are slow on purpose)."""
        from bench.page_client import PageClient

        self.client = PageClient(self.url, self.name, f"{self.name}-password")
        self.client.predict("My router shows a red light.", api_name="/chat")

    def run(self) -> None:
        client = self.client
        i = 0
        while not self.stop.is_set():
            i += 1
            self._act("rate", client, f"reason {i}", api_name="/rate_down")
            text = f"Restart the router, {self.name}; answer {i}."
            self._act("correct", client, text, api_name="/correct")
            client.predict("another sample", api_name="/compare")
            self._act("pick", client, api_name="/pick_A")


def stored(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        counts = {
            "rate": connection.execute(text("select count(*) from ratings")).scalar_one(),
            "correct": connection.execute(text("select count(*) from corrections")).scalar_one(),
            "pick": connection.execute(
                text("select count(*) from preferences where source = 'chat-compare'")
            ).scalar_one(),
        }
    engine.dispose()
    return counts


def server_side_ms(url: str, start: float, end: float) -> dict[str, int]:
    """p50/p95 of the feedback events' time inside serve (queue wait to result, Gradio's own
    profiling), for those that started between perf_counter times `start` and `end`: the
    rest of click-to-acknowledgement is HTTP, the event stream and the client."""
    opener = _opener(url, "expert0", "expert0-password")
    traces = json.loads(opener.open(url + "gradio_api/profiling/traces", timeout=60).read())
    shift = time.time() - time.perf_counter()
    inside = [
        t["queue_wait_ms"] + t["total_ms"]
        for t in traces
        if t["fn_name"] in FEEDBACK_EVENTS and start + shift <= t["timestamp"] <= end + shift
    ]
    return {"p50": round(pct(inside, 0.5)), "p95": round(pct(inside, 0.95)), "n": len(inside)}


def feedback_under_import(
    url: str, serve_pid: int, home: Path, env: dict[str, str], rows: int, argilla: bool
) -> dict[str, Any]:
    child_before = children_cpu_s()
    alone_s, alone = run_import(home, env, write_pairs(home / "alone.jsonl", rows, "alone"))
    import_alone_cpu = children_cpu_s() - child_before
    stop = threading.Event()
    experts = [Expert(url, f"expert{i}", stop) for i in range(EXPERTS)]
    for expert in experts:
        expert.connect()
    for expert in experts:
        expert.start()
    time.sleep(2.0)  # every expert busy
    quiet_from = time.perf_counter()
    time.sleep(20.0)  # the same experts without an import: the baseline
    loaded_data = write_pairs(home / "loaded.jsonl", rows, "loaded")
    before = outbox(home, env) if argilla else {}
    import_from = time.perf_counter()
    syncer = None
    if argilla:  # `tuneloop argilla sync` pushes the backlog while the import runs
        queue_backlog(home, env, SYNC_BACKLOG)
        syncer = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "argilla", "sync", "--json"],
            env={**os.environ, "TUNELOOP_HOME": str(home), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    # Where the CPU went while the import ran: the import, serve, this process (the 8
    # experts' clients, which in real life run on the experts' own machines) and the rest
    # of the machine (the Argilla stack, and anything else running on it).
    cpu_before = (children_cpu_s(), process_cpu_s(serve_pid), sum(os.times()[:2]))
    machine_before = machine_cpu_s()
    loaded_s, loaded = run_import(home, env, loaded_data)
    import_to = time.perf_counter()
    machine = machine_cpu_s() - machine_before
    spent = [
        now - then
        for now, then in zip(
            (children_cpu_s(), process_cpu_s(serve_pid), sum(os.times()[:2])),
            cpu_before,
            strict=True,
        )
    ]
    sync_running_at_end = syncer is not None and syncer.poll() is None
    after = outbox(home, env) if argilla else {}
    synced: dict[str, Any] = {}
    if syncer is not None:
        out, err = syncer.communicate(timeout=900)
        if syncer.returncode:
            raise SystemExit(f"argilla sync failed: {err.strip()[-500:]}")
        synced = json.loads(out)
    stop.set()
    for expert in experts:
        expert.join(timeout=120)
    acked = {k: sum(e.acked[k] for e in experts) for k in ("rate", "correct", "pick")}
    in_db = stored(env.get("TUNELOOP_DATABASE_URL") or f"sqlite:///{home / 'tuneloop.db'}")

    def window(start: float, end: float) -> list[float]:
        return [
            took
            for e in experts
            for samples in e.latencies.values()
            for at, took in samples
            if start <= at <= end
        ]

    latencies, quiet = window(import_from, import_to), window(quiet_from, import_from)
    failed = [f for e in experts for f in e.failed]
    sync = {}
    if argilla:  # pushed to Argilla while the import ran (backlog and 👎 pairs)
        sync = {
            "argilla_sync_pushed": synced.get("pushed"),
            "argilla_pushed_during_import": after["pushed"] - before["pushed"],
            "argilla_sync_still_running_when_import_ended": sync_running_at_end,
        }
    cores = os.cpu_count() or 1
    cpu = {  # cores busy on average while the loaded import ran
        "cores": cores,
        "import_alone": round(import_alone_cpu / alone_s, 2),
        "import": round(spent[0] / loaded_s, 2),
        "serve": round(spent[1] / loaded_s, 2),
        "expert_clients": round(spent[2] / loaded_s, 2),
        "rest_of_machine": round((machine - sum(spent)) / loaded_s, 2),
    }
    return {
        "import_rows": rows,
        "import_alone_s": round(alone_s, 1),
        "import_loaded_s": round(loaded_s, 1),
        "import_speed_ratio": round(alone_s / loaded_s, 2),
        # the import's own CPU time alone and loaded, and how long it waited for a CPU
        "import_sched_s": {"alone": alone["sched"], "loaded": loaded["sched"]},
        "imported": [alone["added"], loaded["added"]],
        "actions_acked": acked,
        "actions_failed": len(failed),
        "failed_examples": failed[:3],
        "lost": {k: acked[k] - in_db[k] for k in acked},
        "ack_p50_ms": round(1000 * pct(latencies, 0.5)),
        "ack_p95_ms": round(1000 * pct(latencies, 0.95)),
        "ack_without_import_p50_ms": round(1000 * pct(quiet, 0.5)),
        "ack_without_import_p95_ms": round(1000 * pct(quiet, 0.95)),
        "inside_serve_ms": server_side_ms(url, import_from, import_to),
        "inside_serve_without_import_ms": server_side_ms(url, quiet_from, import_from),
        **sync,
        "cpu_during_import": cpu,
    }


def _opener(url: str, name: str, password: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    body = urllib.parse.urlencode({"username": name, "password": password}).encode()
    opener.open(url + "login", data=body, timeout=60).read()
    return opener


def login_storm(url: str, attempts: int) -> dict[str, Any]:
    readers = [_opener(url, f"expert{i}", f"expert{i}-password") for i in range(2)]
    done = threading.Event()
    pages: list[float] = []

    def read(opener: urllib.request.OpenerDirector) -> None:
        while not done.is_set():
            start = time.perf_counter()
            opener.open(url + "config", timeout=60).read()
            pages.append(time.perf_counter() - start)
            time.sleep(0.05)

    def guess(i: int) -> None:
        body = urllib.parse.urlencode({"username": f"guess{i}", "password": "wrong"}).encode()
        try:
            urllib.request.urlopen(url + "login", data=body, timeout=600).read()
        except urllib.error.HTTPError:
            pass

    baseline: list[float] = []
    for _ in range(20):
        start = time.perf_counter()
        readers[0].open(url + "config", timeout=60).read()
        baseline.append(time.perf_counter() - start)
    watchers = [threading.Thread(target=read, args=(o,)) for o in readers]
    storm = [threading.Thread(target=guess, args=(i,)) for i in range(attempts)]
    start = time.perf_counter()
    for thread in watchers + storm:
        thread.start()
    for thread in storm:
        thread.join()
    storm_s = time.perf_counter() - start
    done.set()
    for thread in watchers:
        thread.join()
    return {
        "wrong_passwords": attempts,
        "storm_s": round(storm_s, 1),
        "page_idle_p50_ms": round(1000 * pct(baseline, 0.5)),
        "page_p50_ms": round(1000 * pct(pages, 0.5)),
        "page_p95_ms": round(1000 * pct(pages, 0.95)),
        "page_requests": len(pages),
    }


def run(
    db: str, rows: int, storm: int, model_dir: Path, stack: ExitStack, sync_seconds: float
) -> dict[str, Any]:
    from tests.server import add_user, serve

    home = Path(tempfile.mkdtemp(prefix=f"tuneloop-load-{db}-"))
    env = {
        "TUNELOOP_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
        "TUNELOOP_ARGILLA_SYNC_SECONDS": str(sync_seconds),
        "GRADIO_PROFILING": "1",  # per-event timings inside serve (server_side_ms)
    }
    if db == "postgres":
        from tests.pgcluster import throwaway_cluster

        base = stack.enter_context(throwaway_cluster())
        from sqlalchemy import create_engine, text

        admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text('CREATE DATABASE "load"'))
        admin.dispose()
        env["TUNELOOP_DATABASE_URL"] = f"{base}/load"
    if sync_seconds:
        argilla_up(home, env, stack)
    for i in range(EXPERTS):
        add_user(home, f"expert{i}", "expert", f"expert{i}-password", **env)
    with serve(home, model=str(model_dir), **env) as (url, proc):
        loaded = feedback_under_import(url, proc.pid, home, env, rows, bool(sync_seconds))
        result = {"db": db, **loaded}
        if storm:
            result["login_storm"] = login_storm(url, storm)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--storm", type=int, default=160, help="concurrent wrong passwords")
    parser.add_argument("--no-storm", action="store_true")
    parser.add_argument(
        "--sync-seconds", type=float, default=20.0, help="how often `serve` syncs with Argilla"
    )
    parser.add_argument(
        "--no-argilla", action="store_true", help="no Argilla stack, no sync (saves ~1 min)"
    )
    parser.add_argument(
        "--model",
        help="a local model dir for serve (default: a tiny random model, so that the store is "
        "what is measured; a real one adds its decoding to the load)",
    )
    args = parser.parse_args()
    sync_seconds = 0.0 if args.no_argilla else args.sync_seconds
    from tests.tiny import build_tiny_model

    model_dir = (
        Path(args.model)
        if args.model
        else build_tiny_model(Path(tempfile.mkdtemp(prefix="tuneloop-tiny-")) / "model")
    )
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results = []
    with ExitStack() as stack:
        for db in dbs:
            storm = 0 if args.no_storm else args.storm
            result = run(db, args.rows, storm, model_dir, stack, sync_seconds)
            print(json.dumps(result), flush=True)
            results.append(result)
    write_result("bench.store_load", results, settings=vars(args))


if __name__ == "__main__":
    main()
