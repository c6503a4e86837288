"""Open WebUI as the chat page under load: what its helper calls cost people, and the sync.

    .venv/bin/python -m bench.openwebui_load [--users 8] [--turns 2] [--repeats 2] [--ratings 10000]
    .venv/bin/python -m bench.openwebui_load --tiny --users 2 --turns 1 --repeats 1 --ratings 200

A real `tuneloop serve` (the embedded SmolLM2, or `--tiny`: a random tiny model for a smoke
run) behind a real Open WebUI 0.12.4 (`.venv-openwebui`), with a recording proxy between the
two that tells helper calls from people's turns (`app.serving.frontends.is_helper`) and
times every completion as Open WebUI receives it. USERS Open WebUI users chat TURNS turns
each, all at once, through Open WebUI's own API, and rate every reply; first with Open
WebUI's helper calls off, then on (title, tags, follow-ups: its defaults), REPEATS times,
each phase waiting until the last helper call has ended. Measured in this one run:

- the share of serve's decoded tokens that went to helper calls (helpers on);
- people's p50/p95 time to first token as Open WebUI sees it, helpers on against off;
- `tuneloop import` of an Open WebUI export of RATINGS ratings (the sync's work once the
  entries are fetched), and the same import again (nothing new: the cursor's cost).

Figures go to bench/results/openwebui-load-<time>.json (bench.record).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.record import write_result

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "openwebui_export.json"


class Recorder:
    """A proxy between Open WebUI and serve that records each completion it forwards."""

    def __init__(self, backend: str) -> None:
        self.backend = backend.rstrip("/")
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.last_start = 0.0
        self._lock = threading.Lock()

    def app(self) -> Any:
        import httpx
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response, StreamingResponse
        from starlette.routing import Route

        from app.serving.frontends import is_helper

        client = httpx.AsyncClient(timeout=None)

        async def forward(request: Request) -> Any:
            body = await request.body()
            url = self.backend + "/" + request.path_params["path"]
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length", "accept-encoding")
            }
            if request.method != "POST" or not url.endswith("/chat/completions"):
                reply = await client.request(request.method, url, content=body, headers=headers)
                return Response(reply.content, reply.status_code, media_type="application/json")
            data = json.loads(body)
            texts = [(m.get("role", ""), str(m.get("content") or "")) for m in data["messages"]]
            call = {
                "helper": is_helper(model=data["model"], store=data.get("store"), texts=texts),
                "stream": bool(data.get("stream")),
                "ttft_s": None,
                "tokens": 0,
                "seconds": 0.0,
                "status": 0,
            }
            started = time.perf_counter()
            with self._lock:
                self.in_flight += 1
                self.last_start = time.monotonic()
            if not call["stream"]:
                reply = await client.post(url, content=body, headers=headers)
                call["status"] = reply.status_code
                call["seconds"] = call["ttft_s"] = time.perf_counter() - started
                if reply.status_code == 200:
                    call["tokens"] = reply.json()["usage"]["completion_tokens"]
                self._add(call)
                return Response(reply.content, reply.status_code, media_type="application/json")

            async def relay() -> Any:
                async with client.stream("POST", url, content=body, headers=headers) as reply:
                    call["status"] = reply.status_code
                    async for line in reply.aiter_lines():
                        if line.startswith("data: {") and '"content":' in line:
                            piece = json.loads(line[6:])["choices"]
                            if piece and piece[0]["delta"].get("content"):
                                call["tokens"] += 1  # one decode step's piece
                                if call["ttft_s"] is None:
                                    call["ttft_s"] = time.perf_counter() - started
                        yield line + "\n"
                call["seconds"] = time.perf_counter() - started
                self._add(call)

            return StreamingResponse(relay(), media_type="text/event-stream")

        return Starlette(
            routes=[Route("/{path:path}", forward, methods=["GET", "POST"])],
        )

    def _add(self, call: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append(call)
            self.in_flight -= 1

    def settle(self, quiet_s: float = 3.0, timeout_s: float = 600.0) -> None:
        """Wait until no completion is in flight and none has begun for `quiet_s`: Open
        WebUI starts its follow-up and tag requests after the reply, and a phase's helper
        calls must not run into the next phase."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = self.in_flight == 0 and time.monotonic() - self.last_start >= quiet_s
            if idle:
                return
            time.sleep(0.2)
        raise RuntimeError("completions were still running after the phase")

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self.calls = self.calls, []
        return out


@contextmanager
def proxy(backend: str) -> Iterator[tuple[str, Recorder]]:
    """The recording proxy on a free port in front of `backend` (serve's root URL): (its
    /v1 URL, the recorder)."""
    import uvicorn

    from tests.server import free_port

    recorder = Recorder(backend)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(recorder.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", recorder
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def chat_load(owui: Any, tokens: list[str], turns: int, helpers: bool) -> None:
    """Every user chats `turns` turns at once and rates each reply (helper calls on/off)."""
    from tests.openwebui import BACKGROUND_TASKS

    def one(token: str) -> None:
        turn = None
        for i in range(turns):
            text = f"Question {i + 1}: how do I reset my router? ({uuid.uuid4().hex[:6]})"
            turn = owui.send(
                token,
                text,
                chat_id=turn.chat_id if turn else None,
                after=turn.reply_id if turn else None,
                background=BACKGROUND_TASKS if helpers else {},
            )
            try:
                owui.rate(token, turn, 1 if i % 2 == 0 else -1, score=7, tags=helpers)
            except RuntimeError as err:  # the rating is saved; its tags request was refused
                if "tags/completions: 429" not in str(err):
                    raise  # a refused helper call is counted from the recorder's statuses

    with ThreadPoolExecutor(len(tokens)) as pool:
        list(pool.map(one, tokens))


def summary(calls: list[dict[str, Any]]) -> dict[str, Any]:
    people = [c for c in calls if not c["helper"]]
    helpers = [c for c in calls if c["helper"]]
    ttft = sorted(c["ttft_s"] for c in people if c["ttft_s"] is not None)
    tokens = sum(c["tokens"] for c in calls)

    def pct(q: float) -> float | None:
        return round(ttft[min(len(ttft) - 1, int(q * len(ttft)))], 3) if ttft else None

    return {
        "people_calls": len(people),
        "helper_calls": len(helpers),
        "refused": sum(1 for c in calls if c["status"] != 200),
        "tokens_people": sum(c["tokens"] for c in people),
        "tokens_helpers": sum(c["tokens"] for c in helpers),
        "helper_token_share": round(sum(c["tokens"] for c in helpers) / tokens, 3)
        if tokens
        else None,
        "people_ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "people_ttft_p95_s": pct(0.95),
    }


def synthetic_export(n: int) -> list[dict[str, Any]]:
    """N ratings shaped like the recorded export: one rated reply per chat."""
    template = json.loads(FIXTURE.read_text())[-1]  # the first reply's 👍 (a short snapshot)
    out = []
    for i in range(n):
        entry = copy.deepcopy(template)
        entry["id"] = f"bench-{i}"
        entry["user_id"] = f"user-{i % 50}"
        entry["meta"]["chat_id"] = f"chat-{i}"
        entry["data"]["rating"] = 1 if i % 3 else -1
        messages = entry["snapshot"]["chat"]["chat"]["history"]["messages"]
        for message in messages.values():
            message["content"] = f"{message['content']} #{i}"
        out.append(entry)
    return out


def import_time(n: int) -> dict[str, Any]:
    from feedback.openwebui import parse_export
    from feedback.openwebui_sync import apply
    from feedback.store import Store

    entries = synthetic_export(n)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'bench.db'}")
        started = time.perf_counter()
        first = apply(store, parse_export(entries))
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        again = apply(store, parse_export(entries))
        again_s = time.perf_counter() - started
    return {
        "ratings": n,
        "first_import_s": round(first_s, 2),
        "ratings_per_s": round(n / first_s, 1),
        "brought_in": first.brought_in,
        "repeat_import_s": round(again_s, 2),
        "repeat_unchanged": again.unchanged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="off/on phase pairs")
    parser.add_argument("--ratings", type=int, default=10_000)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--tiny", action="store_true", help="a random tiny model (smoke run)")
    args = parser.parse_args()

    from tests.openwebui import missing, run_openwebui
    from tests.server import add_user, issue_key, serve

    reason = missing()
    if reason:
        raise SystemExit(reason)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = None
        if args.tiny:
            from tests.tiny import build_tiny_model

            model = build_tiny_model(root / "tiny")
            config = json.loads((model / "config.json").read_text())
            (model / "config.json").write_text(
                json.dumps({**config, "max_position_embeddings": 4096})
            )
        home = root / "home"
        home.mkdir()
        add_user(home, "owui", "expert", "pw-owui-bench")
        key = issue_key(home, "owui")
        with (
            serve(
                home,
                model=str(model) if model else None,
                TUNELOOP_MAX_NEW_TOKENS=str(args.max_new_tokens),
                TUNELOOP_TRUSTED_FRONTENDS="owui",
            ) as (url, _),
            proxy(url) as (backend, recorder),
            run_openwebui(root / "owui", backend=backend, api_key=key) as owui,
        ):
            admin, _ = owui.signup("Admin", "admin@example.org", "pw-admin-bench")
            tokens = [
                owui.add_user(admin, f"User {i}", f"user{i}@example.org", f"pw-user-{i}")[0]
                for i in range(args.users)
            ]
            assert "tuneloop" in owui.models(tokens[0]), "Open WebUI does not list tuneloop"
            # Off and on alternate (off, on, off, on): neither gets the warmer machine.
            phases: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            walls: dict[bool, float] = {False: 0.0, True: 0.0}
            for helpers in [False, True] * args.repeats:
                started = time.perf_counter()
                chat_load(owui, tokens, args.turns, helpers)
                recorder.settle()
                walls[helpers] += time.perf_counter() - started
                phases[helpers] += recorder.take()
            for helpers, key_ in ((True, "helpers_on"), (False, "helpers_off")):
                figures[key_] = {**summary(phases[helpers]), "wall_s": round(walls[helpers], 1)}
                print(key_, json.dumps(figures[key_]))
    on, off = figures["helpers_on"], figures["helpers_off"]
    if on["people_ttft_p95_s"] and off["people_ttft_p95_s"]:
        figures["people_ttft_p95_ratio_on_vs_off"] = round(
            on["people_ttft_p95_s"] / off["people_ttft_p95_s"], 2
        )
    figures["import"] = import_time(args.ratings)
    print("import", json.dumps(figures["import"]))
    write_result("bench.openwebui_load", figures, settings=vars(args), name="openwebui-load")


if __name__ == "__main__":
    main()
