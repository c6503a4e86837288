"""Hostile clients against a real `tuneloop serve`: do normal streams notice them?

One serve, N normal streaming clients (the official `openai` client) asking one question
after another. The same load runs twice, interleaved (quiet, hostile, quiet, hostile, ...):
once alone, once while a pool of hostile clients sends `--hostile` requests of every kind
below (out-of-range fields, NUL characters, lone surrogates, deep nesting, oversized bodies,
clients that leave mid-reply). Prints the normal streams interrupted (an error, or no
finish reason) and their p95 time to first token with the hostile requests against without,
and writes the JSON under bench/results/ (bench/record.py; TUNELOOP_BENCH_RESULTS elsewhere).

    .venv/bin/python -m bench.hostile                       # embedded SmolLM2, the real figure
    TUNELOOP_BENCH_RESULTS=/tmp .venv/bin/python -m bench.hostile --tiny --hostile 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx  # here, not in the senders' threads: a first import there races

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

QUESTION = [{"role": "user", "content": "My router lights are red. What should I do?"}]
MAX_BODY = 262_144  # TUNELOOP_API_MAX_BODY_BYTES for the run


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "tuneloop", "messages": QUESTION, **fields}).encode()


# kind -> raw body (bytes), or ("leave", fields) for a client that goes away mid-reply
HOSTILE: dict[str, Any] = {
    "seed_past_int64": _body(seed=2**64, temperature=0.7),
    "seed_below_int64": _body(seed=-(2**63) - 1, temperature=0.7),
    "temperature_3": _body(temperature=3),
    "top_p_2": _body(top_p=2),
    "max_tokens_0": _body(max_tokens=0),
    "five_stops": _body(stop=["a", "b", "c", "d", "e"]),
    "tool_role": _body(messages=[{"role": "tool", "content": "x"}]),
    "long_message": _body(messages=[{"role": "user", "content": "x" * 100_000}]),
    "nul": _body(messages=[{"role": "user", "content": "a\x00b"}]),
    "lone_surrogate": (
        b'{"model": "tuneloop", "messages": [{"role": "user", "content": "\\ud800"}]}'
    ),
    "nested_60k": b"[" * 60_000 + b"]" * 60_000,
    "nan": b'{"model": "tuneloop", "messages": [], "temperature": NaN}',
    "int_5000_digits": b'{"model": "tuneloop", "messages": [], "seed": ' + b"9" * 5000 + b"}",
    "not_utf8": b'{"model": "\xff"}',
    "oversized": _body(messages=[{"role": "user", "content": "y" * (MAX_BODY + 10)}]),
    "leaves_whole_reply": ("leave", {"stream": False}),
    "leaves_stream": ("leave", {"stream": True}),
}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def normal_streams(url: str, key: str, streams: int, rounds: int, max_new: int) -> dict:
    """`streams` clients, each streaming `rounds` replies in a row; TTFTs and interruptions."""
    from openai import OpenAI

    ttfts: list[float] = []
    interrupted: list[str] = []
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        client = OpenAI(base_url=url + "v1", api_key=key, max_retries=0, timeout=600)
        for _ in range(rounds):
            started = time.perf_counter()
            first: float | None = None
            finish = None
            try:
                stream = client.chat.completions.create(
                    model="tuneloop", messages=QUESTION, stream=True, max_tokens=max_new
                )
                for chunk in stream:
                    if not chunk.choices:
                        continue
                    if chunk.choices[0].delta.content and first is None:
                        first = time.perf_counter() - started
                    finish = chunk.choices[0].finish_reason or finish
            except Exception as err:  # an interrupted stream is what this counts
                with lock:
                    interrupted.append(f"{type(err).__name__}: {err}"[:200])
                continue
            with lock:
                if finish is None:
                    interrupted.append("no finish reason")
                if first is not None:
                    ttfts.append(first)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"replies": streams * rounds, "ttfts": ttfts, "interrupted": interrupted}


def send_hostile(url: str, key: str, kind: str, what: Any) -> str:
    """One hostile request; its outcome as a short label (status code or what happened)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    target = url + "v1/chat/completions"
    if isinstance(what, tuple):  # a client that leaves: a long reply, gone after 0.2 s
        short = [{"role": "system", "content": "Be brief."}, *QUESTION]  # fits a tiny context
        request = {"model": "tuneloop", "messages": short, "max_tokens": 400, **what[1]}
        try:
            with httpx.stream(
                "POST",
                target,
                json=request,
                headers=headers,
                timeout=httpx.Timeout(60, read=0.2),
            ) as response:
                for i, _ in enumerate(response.iter_lines()):
                    if i >= 3:
                        break
            return f"left ({response.status_code})"
        except httpx.ReadTimeout:
            return "left"
    try:
        return str(httpx.post(target, content=what, headers=headers, timeout=60).status_code)
    except httpx.HTTPError as err:
        return type(err).__name__


def hostile_load(url: str, key: str, per_kind: int) -> Counter[str]:
    """`per_kind` requests of every kind, 4 at a time; the outcome of each, counted."""
    outcomes: Counter[str] = Counter()
    jobs = [(kind, what) for _ in range(per_kind) for kind, what in HOSTILE.items()]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {}
        for kind, what in jobs:
            futures[pool.submit(send_hostile, url, key, kind, what)] = kind
        for future, kind in futures.items():
            outcomes[f"{kind} {future.result()}"] += 1
    return outcomes


def serving_report(url: str, key: str) -> dict:
    models = httpx.get(url + "v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    return dict(models.get("serving", {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local HF model dir (default: embedded)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (smoke run)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="replies per stream per phase")
    parser.add_argument("--repeats", type=int, default=2, help="quiet/hostile phase pairs")
    parser.add_argument("--hostile", type=int, default=100, help="requests of every kind")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from app.config import Settings
    from tests.server import add_user, issue_key, serve

    home = Path(tempfile.mkdtemp(prefix="tuneloop-bench-hostile-"))
    if args.tiny:
        from tests.tiny import build_tiny_model

        model = str(build_tiny_model(home / "tiny-model"))
    else:
        from app.serving.modelfiles import resolve_model_dir

        settings = Settings()
        model = str(resolve_model_dir(args.model, settings.models_dir, progress=True))
    (home / "home").mkdir()
    home = home / "home"
    add_user(home, "bench", "expert", "bench-pw")
    key = issue_key(home, "bench")
    env = {
        "TUNELOOP_TEMPERATURE": "0",
        "TUNELOOP_MAX_NEW_TOKENS": str(args.max_new_tokens),
        "TUNELOOP_API_MAX_ACTIVE": str(args.streams + 8),
        "TUNELOOP_API_MAX_BODY_BYTES": str(MAX_BODY),
    }
    quiet: list[dict] = []
    loud: list[dict] = []
    outcomes: Counter[str] = Counter()
    with serve(home, model=model, **env) as (url, _proc):
        normal_streams(url, key, 1, 1, args.max_new_tokens)  # warm-up
        per_phase = max(1, args.hostile // args.repeats)
        for _ in range(args.repeats):
            quiet.append(normal_streams(url, key, args.streams, args.rounds, args.max_new_tokens))
            with ThreadPoolExecutor(max_workers=1) as sender:
                hostile = sender.submit(hostile_load, url, key, per_phase)
                loud.append(
                    normal_streams(url, key, args.streams, args.rounds, args.max_new_tokens)
                )
                outcomes.update(hostile.result())  # every hostile request of the phase answered
        serving = serving_report(url, key)

    def merged(phases: list[dict], key: str) -> list:
        return [v for p in phases for v in p[key]]

    q95, h95 = pct(merged(quiet, "ttfts"), 0.95), pct(merged(loud, "ttfts"), 0.95)
    server_errors = sum(n for label, n in outcomes.items() if label.split()[-1].startswith("5"))
    report = {
        "model": "tiny" if args.tiny else model,
        "streams": args.streams,
        "replies_per_phase": args.streams * args.rounds,
        "hostile_requests": sum(outcomes.values()),
        "hostile_kinds": len(HOSTILE),
        "hostile_outcomes": dict(sorted(outcomes.items())),
        "hostile_5xx": server_errors,
        "streams_interrupted": len(merged(loud, "interrupted")),
        "streams_interrupted_quiet": len(merged(quiet, "interrupted")),
        "interruptions": merged(loud, "interrupted")[:10],
        "ttft_p95_s": {"without_hostile": q95, "with_hostile": h95},
        "ttft_p95_ratio": (h95 / q95) if q95 and h95 else None,
        "serving": serving,
    }
    from bench.record import write_result

    out = write_result("bench.hostile", report, settings=vars(args))
    print(
        f"{report['hostile_requests']} hostile requests ({len(HOSTILE)} kinds), "
        f"{server_errors} answered 5xx; normal streams interrupted: "
        f"{report['streams_interrupted']} of {args.streams * args.rounds * args.repeats}\n"
        f"p95 time to first token: {h95 if h95 is None else round(h95, 3)} s with the hostile "
        f"requests, {q95 if q95 is None else round(q95, 3)} s without "
        f"(ratio {report['ttft_p95_ratio'] and round(report['ttft_p95_ratio'], 2)}); "
        f"decoder restarts {serving.get('decoder_restarts')}\nwrote {out}"
    )


if __name__ == "__main__":
    main()
