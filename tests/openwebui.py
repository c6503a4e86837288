"""A real Open WebUI 0.12.4 (from `.venv-openwebui`, built by `.ci/setup test`), driven over
its own HTTP API the way its page drives it.

`run_openwebui` starts it offline against a tuneloop `/v1`; `OpenWebUI` signs users up, chats
(`POST /api/chat/completions` with the page's fields: a new chat, a follow-up, a regenerated
reply; its background title / tag / follow-up tasks on), rates replies the way the page does
(`POST /api/v1/evaluations/feedback` with the chat as its snapshot, then the tag request the
page sends after a rating) and reads the admin's feedback export. Used by the `openwebui`
tests and by `python -m tests.openwebui record` (which recorded
`tests/data/openwebui_export.json`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.server import free_port, serve

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-openwebui"
BINARY = VENV / "bin" / "open-webui"
# What the page asks for after each reply (Open WebUI's defaults).
BACKGROUND_TASKS = {"title_generation": True, "tags_generation": True, "follow_up_generation": True}


def missing() -> str | None:
    """Why Open WebUI cannot run here, or None when it can."""
    if not BINARY.exists():
        return f"Open WebUI is not installed ({VENV} is missing: run `bash .ci/setup test`)"
    return None


@dataclass
class Turn:
    """One exchange in an Open WebUI chat: the ids of the user's message and of the reply."""

    chat_id: str
    user_message_id: str
    reply_id: str


class OpenWebUI:
    """Open WebUI's HTTP API, as its page calls it."""

    def __init__(self, url: str, model: str = "tuneloop") -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def _call(self, method: str, path: str, token: str | None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    # -- accounts -------------------------------------------------------------------------
    def signup(self, name: str, email: str, password: str) -> tuple[str, str]:
        """(token, Open WebUI user id) of a new account; the first one is the admin."""
        body = self._call(
            "POST",
            "/api/v1/auths/signup",
            None,
            json={"name": name, "email": email, "password": password},
        )
        return str(body["token"]), str(body["id"])

    def add_user(self, admin_token: str, name: str, email: str, password: str) -> tuple[str, str]:
        """(token, Open WebUI user id) of a user the admin adds (the admin page's "Add User")."""
        self._call(
            "POST",
            "/api/v1/auths/add",
            admin_token,
            json={"name": name, "email": email, "password": password, "role": "user"},
        )
        body = self._call(
            "POST", "/api/v1/auths/signin", None, json={"email": email, "password": password}
        )
        return str(body["token"]), str(body["id"])

    def models(self, token: str) -> list[str]:
        return [m["id"] for m in self._call("GET", "/api/models", token)["data"]]

    # -- chatting -------------------------------------------------------------------------
    def chat_record(self, token: str, chat_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/chats/{chat_id}", token))

    def _history(self, token: str, chat_id: str, leaf: str | None) -> list[dict[str, str]]:
        """The OpenAI messages from the chat's root to `leaf` (as the page sends them)."""
        if leaf is None:
            return []
        messages = self.chat_record(token, chat_id)["chat"]["history"]["messages"]
        path = []
        current: str | None = leaf
        while current:
            node = messages[current]
            path.append({"role": node["role"], "content": node["content"]})
            current = node.get("parentId")
        return path[::-1]

    def send(
        self,
        token: str,
        text: str,
        *,
        chat_id: str | None = None,
        after: str | None = None,
        background: dict[str, bool] | None = None,
    ) -> Turn:
        """A new message (a new chat when `chat_id` is None, else after reply `after`);
        waits for the reply to be saved. `background`: the helper tasks Open WebUI runs
        after it (its page's defaults unless given; {} for none)."""
        user_message_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        history = self._history(token, chat_id, after) if chat_id else []
        user_message = {
            "id": user_message_id,
            "parentId": after,
            "childrenIds": [],
            "role": "user",
            "content": text,
            "timestamp": int(time.time()),
            "models": [self.model],
        }
        body = {
            "model": self.model,
            "messages": [*history, {"role": "user", "content": text}],
            "stream": True,
            "params": {},
            "user_message": user_message,
            "id": reply_id,
            "session_id": "tests-" + uuid.uuid4().hex[:8],
            "background_tasks": BACKGROUND_TASKS if background is None else background,
            "parent_id": after,
            **({"chat_id": chat_id} if chat_id else {}),
        }
        started = self._call("POST", "/api/chat/completions", token, json=body)
        turn = Turn(str(started["chat_id"]), user_message_id, reply_id)
        self.wait_reply(token, turn.chat_id, reply_id)
        return turn

    def regenerate(self, token: str, turn: Turn) -> Turn:
        """Another reply to `turn`'s user message (the page's regenerate button)."""
        reply_id = str(uuid.uuid4())
        record = self.chat_record(token, turn.chat_id)
        user_message = record["chat"]["history"]["messages"][turn.user_message_id]
        history = self._history(token, turn.chat_id, turn.user_message_id)
        body = {
            "model": self.model,
            "messages": history,
            "stream": True,
            "params": {},
            "user_message": {"id": user_message["id"], "models": [self.model]},
            "id": reply_id,
            "session_id": "tests-" + uuid.uuid4().hex[:8],
            "background_tasks": {"follow_up_generation": True},
            "chat_id": turn.chat_id,
            "parent_id": user_message.get("parentId"),
        }
        self._call("POST", "/api/chat/completions", token, json=body)
        self.wait_reply(token, turn.chat_id, reply_id)
        return Turn(turn.chat_id, turn.user_message_id, reply_id)

    def wait_reply(self, token: str, chat_id: str, reply_id: str, timeout: float = 300) -> str:
        """The reply's text once Open WebUI has saved it as done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.chat_record(token, chat_id)["chat"]["history"]["messages"]
            message = messages.get(reply_id) or {}
            if message.get("error"):
                raise RuntimeError(f"Open WebUI's reply failed: {message['error']}")
            if message.get("done"):
                return str(message.get("content") or "")
            time.sleep(0.5)
        raise TimeoutError(f"reply {reply_id} was not done within {timeout:.0f} s")

    def wait_regenerated(self, token: str, chat_id: str, timeout: float = 120) -> str:
        """The id of a reply regenerated on the page, once it is saved as done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.chat_record(token, chat_id)["chat"]["history"]["messages"]
            for message in messages.values():
                children = message.get("childrenIds") or []
                if message["role"] == "user" and len(children) > 1:
                    newest = messages.get(children[-1]) or {}
                    if newest.get("done"):
                        return str(children[-1])
            time.sleep(0.5)
        raise TimeoutError(f"no regenerated reply in chat {chat_id} within {timeout:.0f} s")

    # -- rating -----------------------------------------------------------------------------
    def rate(
        self,
        token: str,
        turn: Turn,
        rating: int,
        *,
        reason: str | None = None,
        comment: str | None = None,
        score: int | None = None,
        tags: bool = True,
        change: str | None = None,
    ) -> str:
        """Rate a reply as the page does (the chat as the snapshot); returns the feedback id.

        `tags`: then ask for the chat's tags, as the page does after a rating. `change`: the
        feedback id of an earlier rating of this reply, changed instead of a new one made.
        """
        record = self.chat_record(token, turn.chat_id)
        messages = record["chat"]["history"]["messages"]
        reply = messages[turn.reply_id]
        siblings = [m for m in messages[reply["parentId"]]["childrenIds"] if m != turn.reply_id]
        annotation: dict[str, Any] = {"rating": rating}
        if reason is not None:
            annotation["reason"] = reason
        if comment is not None:
            annotation["comment"] = comment
        if score is not None:
            annotation["details"] = {"rating": score}
        data: dict[str, Any] = {**annotation, "model_id": reply.get("model", self.model)}
        if siblings:
            data["sibling_model_ids"] = [messages[m].get("model", self.model) for m in siblings]
        path = self._history(token, turn.chat_id, turn.reply_id)
        body = {
            "type": "rating",
            "data": data,
            "meta": {
                "arena": False,
                "model_id": reply.get("model", self.model),
                "message_id": turn.reply_id,
                "message_index": len(path),
                "chat_id": turn.chat_id,
            },
            "snapshot": {"chat": record},
        }
        path_ = "/api/v1/evaluations/feedback" + (f"/{change}" if change else "")
        feedback = self._call("POST", path_, token, json=body)
        if tags:
            self._call(
                "POST",
                "/api/v1/tasks/tags/completions",
                token,
                json={"model": self.model, "messages": path, "chat_id": turn.chat_id},
            )
        return str(feedback["id"])

    def export(self, admin_token: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/evaluations/feedbacks/all/export", admin_token))


@contextmanager
def run_openwebui(
    workdir: Path,
    *,
    backend: str,
    api_key: str,
    forward_headers: bool = True,
    task_model: str | None = None,
    timeout: float = 240.0,
) -> Iterator[OpenWebUI]:
    """Open WebUI on a free port, offline, using `backend` (a tuneloop `/v1` URL)."""
    with _openwebui(workdir, backend, api_key, forward_headers, task_model, timeout) as ready:
        yield ready()


@contextmanager
def serve_behind_openwebui(
    workdir: Path, home: Path, *, model: str | None, api_key: str, **serve_env: str
) -> Iterator[tuple[str, OpenWebUI]]:
    """A tuneloop serve with Open WebUI in front of it, the two starting at once (both
    starts are mostly single-threaded imports, so on two cores they overlap): yields
    (serve's URL, Open WebUI)."""
    port = free_port()
    backend = f"http://127.0.0.1:{port}/v1"
    with (
        _openwebui(workdir, backend, api_key, True, None, 240.0) as ready,
        serve(home, model=model, port=port, **serve_env) as (url, _),
    ):
        yield url, ready()


@contextmanager
def _openwebui(
    workdir: Path,
    backend: str,
    api_key: str,
    forward_headers: bool,
    task_model: str | None,
    timeout: float,
) -> Iterator[Callable[[], OpenWebUI]]:
    """Start Open WebUI; yields a call that waits until it answers; stops it afterwards."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")},
        "DATA_DIR": str(workdir / "data"),
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_OPENAI_API": "true",
        "OPENAI_API_BASE_URL": backend,
        "OPENAI_API_KEY": api_key,
        "WEBUI_SECRET_KEY": "tests-" + uuid.uuid4().hex,
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true" if forward_headers else "false",
        # Users see the backend's models without an admin granting each one (the test's
        # users are plain users).
        "BYPASS_MODEL_ACCESS_CONTROL": "true",
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ENABLE_COMMUNITY_SHARING": "false",
        "ANONYMIZED_TELEMETRY": "false",
        "SCARF_NO_ANALYTICS": "true",
        "DO_NOT_TRACK": "true",
        "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
        "RAG_RERANKING_MODEL_AUTO_UPDATE": "false",
        "WHISPER_MODEL_AUTO_UPDATE": "false",
    }
    if task_model:
        env["TASK_MODEL_EXTERNAL"] = task_model
        env["TASK_MODEL"] = task_model
    log = open(workdir / "openwebui.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BINARY), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout

    def ready() -> OpenWebUI:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Open WebUI exited:\n{(workdir / 'openwebui.log').read_text()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return OpenWebUI(url)
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tail = (workdir / "openwebui.log").read_text()[-3000:]
                raise RuntimeError(f"Open WebUI did not start:\n{tail}")
            time.sleep(0.2)

    try:
        yield ready
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def record(out: Path) -> list[dict[str, Any]]:
    """Run the scenario the fixture holds against a tuneloop serve on the tiny model.

    One user chats two turns, rates the first reply up (score 8), the second down with a
    reason and a comment, regenerates the second and rates the new one up (score 9).
    """
    import tempfile

    from tests.server import add_user, issue_key, serve
    from tests.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(os.environ.get("OPENWEBUI_RECORD_DIR") or tmp)
        model = build_tiny_model(root / "tiny")
        # Open WebUI's task prompts run to ~700 tokens of the tiny vocabulary: let the tiny
        # model take them (its rotary positions extend; the replies stay random either way).
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
        home = root / "home"
        home.mkdir()
        add_user(home, "owui", "expert", "pw-owui-long-enough")
        key = issue_key(home, "owui")
        with (
            serve(
                home,
                model=str(model),
                TUNELOOP_MAX_NEW_TOKENS="16",
            ) as (url, _),
            run_openwebui(root / "owui", backend=url + "v1", api_key=key) as owui,
        ):
            admin, _ = owui.signup("Admin", "admin@example.org", "pw-admin-1")
            token, _ = owui.add_user(admin, "Dana Expert", "dana@example.org", "pw-dana-1")
            assert owui.model in owui.models(token), "Open WebUI does not list tuneloop"
            first = owui.send(token, "How do I return a damaged kettle?")
            owui.rate(token, first, 1, score=8)
            second = owui.send(
                token, "And if I lost the receipt?", chat_id=first.chat_id, after=first.reply_id
            )
            owui.rate(token, second, -1, reason="Not helpful", comment="It ignores the receipt")
            third = owui.regenerate(token, second)
            owui.rate(token, third, 1, score=9)
            exported = owui.export(admin)
    out.write_text(json.dumps(exported, indent=1, ensure_ascii=False) + "\n")
    return exported


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["record"]:
        out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "tests/data/openwebui_export.json"
        done = record(out)
        print(f"recorded {len(done)} feedback entries")
