"""A right login's latency during a login storm, against the same login idle, in one run.

A real `tuneloop serve` (tiny model: the logins are measured) behind a pretend reverse
proxy (`TUNELOOP_TRUSTED_PROXIES=127.0.0.1`, each guesser's address in X-Forwarded-For),
so the storm comes from `--addresses` client addresses, each guessing wrong passwords for
new names as fast as the server answers. Meanwhile a right login is made every second,
each from an address of its own (a person logging in). Reported: the right login's
p50/p95 idle and during the storm, their ratio (goal: within 2x), how many guesses were
answered, and the worker count (the cores). Figures go to bench/results/ (`bench.record`).

    .venv/bin/python -m bench.login_storm                       # 100 addresses, 30 s
    TUNELOOP_BENCH_RESULTS=/tmp .venv/bin/python -m bench.login_storm --addresses 10 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from bench.record import write_result  # noqa: E402 - after the environment above


def login(url: str, name: str, password: str, address: str) -> tuple[int, float]:
    """POST the login form as the page does, through the pretend proxy: (status, seconds)."""
    body = urllib.parse.urlencode({"username": name, "password": password}).encode()
    request = urllib.request.Request(url + "login", data=body, headers={"X-Forwarded-For": address})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            status = reply.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def right_logins(url: str, count: int, tag: str, gap: float) -> list[float]:
    """`count` right logins, each from a fresh address, `gap` seconds apart; their times."""
    took = []
    for i in range(count):
        status, seconds = login(url, "erin", "erin-password", f"10.{tag}.{i // 250}.{i % 250}")
        assert status == 200, f"the right login was refused ({status})"
        took.append(seconds)
        time.sleep(gap)
    return took


def storm(url: str, addresses: int, stop: threading.Event, answers: list[int]) -> None:
    """One guesser per address, each guessing new names until `stop`."""

    def guess(a: int) -> None:
        k = 0
        while not stop.is_set():
            try:
                status, _ = login(url, f"guess{a}x{k}", "wrong", f"198.18.{a // 250}.{a % 250}")
            except OSError:  # the server stopped at the end of the run
                return
            answers.append(status)
            k += 1

    threads = [threading.Thread(target=guess, args=(a,), daemon=True) for a in range(addresses)]
    for thread in threads:
        thread.start()


def run(addresses: int, seconds: float, model_dir: Path) -> dict[str, Any]:
    from tests.server import add_user, serve

    home = Path(tempfile.mkdtemp(prefix="tuneloop-login-storm-"))
    env = {"TUNELOOP_TRUSTED_PROXIES": "127.0.0.1", "TUNELOOP_LOG_LEVEL": "WARNING"}
    add_user(home, "erin", "expert", "erin-password", **env)
    with serve(home, model=str(model_dir), **env) as (url, _):
        login(url, "warm", "up", "10.255.0.1")  # the first check builds the dummy hash
        idle = right_logins(url, 8, "1", 0.2)
        stop = threading.Event()
        answers: list[int] = []
        storm(url, addresses, stop, answers)
        time.sleep(min(5.0, seconds / 3))  # let the storm's queue fill
        during = right_logins(url, max(3, int(seconds)), "2", 1.0)
        stop.set()
    return {
        "cores": len(os.sched_getaffinity(0)),
        "storm_addresses": addresses,
        "right_logins_idle": len(idle),
        "right_logins_storm": len(during),
        "idle_p50_ms": round(1000 * pct(idle, 0.5)),
        "idle_p95_ms": round(1000 * pct(idle, 0.95)),
        "storm_p50_ms": round(1000 * pct(during, 0.5)),
        "storm_p95_ms": round(1000 * pct(during, 0.95)),
        "storm_over_idle_p50": round(pct(during, 0.5) / pct(idle, 0.5), 2),
        "storm_over_idle_p95": round(pct(during, 0.95) / pct(idle, 0.95), 2),
        "guesses_answered": len(answers),
        "guesses_let_in": sum(1 for status in answers if status == 200),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addresses", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", help="a local model dir (default: a tiny random model)")
    args = parser.parse_args()
    from tests.tiny import build_tiny_model

    model_dir = (
        Path(args.model)
        if args.model
        else build_tiny_model(Path(tempfile.mkdtemp(prefix="tuneloop-tiny-")) / "model")
    )
    result = run(args.addresses, args.seconds, model_dir)
    write_result("bench.login_storm", result, settings=vars(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
