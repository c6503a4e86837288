"""Helpers of bench/store_load.py: CPU accounting from /proc, and the run's local Argilla."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy so far, all cores (Linux /proc)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the imports)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def queue_backlog(home: Path, env: dict[str, str], n: int) -> None:
    """Queue `n` pairs for Argilla in the run's store (as `pairs generate` would)."""
    from feedback.argilla.outbox import NewPair, queue_pairs
    from feedback.store import Store

    store = Store.open(env.get("TUNELOOP_DATABASE_URL") or f"sqlite:///{home / 'tuneloop.db'}")
    pairs = [
        NewPair(
            source="generated",
            prompt=[{"role": "user", "content": f"Backlog question {i}: the router is slow?"}],
            first=f"Restart it ({i}).",
            second=f"Call us ({i}).",
        )
        for i in range(n)
    ]
    queue_pairs(store, pairs)
    store.engine.dispose()


def outbox(home: Path, env: dict[str, str]) -> dict[str, int]:
    from feedback.store import Store

    store = Store.open(env.get("TUNELOOP_DATABASE_URL") or f"sqlite:///{home / 'tuneloop.db'}")
    try:
        return store.outbox_counts()
    finally:
        store.engine.dispose()


def argilla_up(home: Path, env: dict[str, str], stack: ExitStack) -> None:
    """`tuneloop argilla up` in the run's home (its own ports); `argilla down` at the end."""
    from tests.server import free_port

    env["TUNELOOP_ARGILLA_PORT"] = str(free_port())
    full = {**os.environ, "TUNELOOP_HOME": str(home), **env}
    cli = [sys.executable, "-m", "app.cli", "argilla"]
    up = subprocess.run([*cli, "up", "--json"], env=full, capture_output=True, text=True)
    if up.returncode:
        raise SystemExit(f"argilla up failed: {up.stderr.strip()[-500:]}")
    stack.callback(subprocess.run, [*cli, "down"], env=full, capture_output=True, check=False)


def schedstat_until_exit(pid: int, every: float = 0.05) -> dict[str, float]:
    """Until process `pid` exits: the seconds its threads ran on a CPU and waited on the run
    queue (runnable, but no CPU free), summed over /proc/PID/task/*/schedstat; the last
    reading before it exited."""
    last = {"on_cpu_s": 0.0, "runqueue_wait_s": 0.0}
    tasks = Path(f"/proc/{pid}/task")
    while True:
        ran = waited = 0
        try:
            threads = list(tasks.iterdir())
        except FileNotFoundError:  # exited (and reaped)
            return last
        for task in threads:
            try:
                fields = (task / "schedstat").read_text().split()
            except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
                continue
            ran, waited = ran + int(fields[0]), waited + int(fields[1])
        if not ran:  # an exited process's tasks read as zeros
            return last
        last = {"on_cpu_s": round(ran / 1e9, 2), "runqueue_wait_s": round(waited / 1e9, 2)}
        time.sleep(every)
