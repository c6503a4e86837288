"""A lean client of the chat page's events, speaking the page's own protocol.

The browser sends an event as a POST to `queue/join` and reads its messages from the
session's event stream (`queue/data`), over a connection it keeps open. `gradio_client`
does the same with a new HTTP client per call, helper threads and polling, which costs
more CPU than serve spends on the event. In the store benchmark the simulated experts run
on the server's own two cores (in real life their browsers run on their own machines), so
their client must cost little, or it measures itself.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx


class PageError(Exception):
    """The event failed on the server (its message), or the stream ended without a result."""


class PageClient:
    """One logged-in browser session: its own session (state lives on the server under its
    session hash) and one kept-alive connection."""

    def __init__(self, url: str, name: str, password: str, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/") + "/"
        self.http = httpx.Client(timeout=timeout)
        self.session = uuid.uuid4().hex
        login = self.http.post(self.url + "login", data={"username": name, "password": password})
        login.raise_for_status()
        config = self.http.get(self.url + "config").json()
        states = {c["id"] for c in config["components"] if c.get("type") == "state"}
        # api_name -> (the event's id, which of its inputs are server-side state)
        self.events: dict[str, tuple[int, list[bool]]] = {
            dep["api_name"]: (dep["id"], [i in states for i in dep["inputs"]])
            for dep in config["dependencies"]
            if dep.get("api_name")
        }

    def predict(self, *args: Any, api_name: str) -> list[Any]:
        """Run the event named `api_name` with `args` for its non-state inputs (as
        gradio_client takes them) and return its final outputs."""
        event, state_inputs = self.events[api_name.lstrip("/")]
        given = iter(args)
        data = [None if is_state else next(given) for is_state in state_inputs]
        joined = self.http.post(
            self.url + "gradio_api/queue/join",
            json={
                "data": data,
                "fn_index": event,
                "trigger_id": None,
                "event_data": None,
                "session_hash": self.session,
            },  # fmt: skip
        )
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with self.http.stream(
            "GET", self.url + "gradio_api/queue/data", params={"session_hash": self.session}
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id:
                    continue
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    if not message.get("success", True) or "error" in output:
                        raise PageError(str(output.get("error")))
                    return list(output["data"])
        raise PageError(f"{api_name}: the event stream ended without a result")

    def close(self) -> None:
        self.http.close()
