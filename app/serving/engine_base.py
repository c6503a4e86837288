"""What every chat engine shares, whatever generates the tokens.

Prompts (the system prompt plus the newest whole turns that fit the context beside the
reply), token counts through the chat template, following the registry's CURRENT pointer
in a background thread, and whole replies from streamed ones. `ChatEngine` (the built-in
engine, `app/serving/engine.py`) and `VllmEngine` (`app/serving/vllm_engine.py`) add loading,
streaming and switching versions.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Self

from app.serving.replies import ContextTooLong, Reply, ReplyInfo, SamplingParams, ServingError
from training.registry import Registry, RegistryError

log = logging.getLogger(__name__)

CURRENT = "CURRENT"  # as `adapter=`: whatever the registry pointer names right now
_ROLES = ("system", "user", "assistant")


class EngineBase:
    """Prompts, CURRENT-following and whole replies; subclasses set `tokenizer` and
    implement `stream`, `serving_version` and the version hooks `refresh` calls."""

    tokenizer: Any

    def __init__(
        self,
        registry: Registry,
        *,
        system_prompt: str,
        context_tokens: int,
        poll_seconds: float,
        model_name: str,
    ) -> None:
        self.registry = registry
        self.system_prompt = system_prompt
        self.context_tokens = context_tokens
        self.poll_seconds = poll_seconds
        self.model_name = model_name
        self._tok_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._refused: str | None = None  # CURRENT named this and it failed to load

    # -- what subclasses provide ---------------------------------------------------------
    def stream(
        self, history: list[dict], params: SamplingParams, *, adapter: str | None = CURRENT
    ) -> Reply:
        raise NotImplementedError

    def serving_version(self) -> str | None:
        """The version new requests get now (None: the bare base model)."""
        raise NotImplementedError

    def versions_lock(self) -> AbstractContextManager[Any]:
        """Held while `refresh` loads and switches versions (none by default)."""
        return nullcontext()

    def load_version(self, version: str) -> None:
        """Make `version` ready to serve; ServingError when it cannot be."""
        raise NotImplementedError

    def health(self) -> dict[str, object]:
        """What `/v1/models` and `tuneloop status` report about the decoding loop."""
        return {}

    def switch_to(self, version: str | None) -> None:
        """Serve `version` (loaded) to new requests from now on."""
        raise NotImplementedError

    def tidy_versions(self) -> None:
        """After each check of CURRENT: let go of versions no longer needed (nothing here)."""

    # -- following CURRENT -----------------------------------------------------------------
    def refresh(self) -> bool:
        """Read CURRENT now; load and switch to the version it names. True if it switched.

        A version that fails verification or loading is refused: the engine keeps serving
        what it had, logs why once, and tries again only after CURRENT changes.
        """
        with self.versions_lock():
            try:
                pointer = self.registry.current()
            except (OSError, RegistryError) as err:
                log.warning("could not read the CURRENT pointer: %s", err)
                return False
            previous = self.serving_version()
            if pointer == previous:
                self._refused = None
                self.tidy_versions()
                return False
            if pointer is not None and pointer == self._refused:
                return False
            if pointer is not None:
                try:
                    self.load_version(pointer)
                except ServingError as err:
                    self._refused = pointer
                    log.error(
                        "CURRENT names %r but it cannot be served; still serving %s. %s",
                        pointer,
                        label(previous),
                        err,
                    )
                    return False
            self.switch_to(pointer)
            self._refused = None
            log.info("now serving %s (was %s)", label(pointer), label(previous))
            self.tidy_versions()
            return True

    # -- shared --------------------------------------------------------------------------
    def start(self) -> None:
        """Follow CURRENT in a background thread, checking every `poll_seconds`."""
        if self._poller is not None and self._poller.is_alive():
            return
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._poll, name="tuneloop-adapter-poll", daemon=True
        )
        self._poller.start()

    def close(self) -> None:
        """Stop following CURRENT. Replies in flight still finish."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=max(5.0, 2 * self.poll_seconds))
            self._poller = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build_prompt(self, history: list[dict], max_new_tokens: int) -> list[dict]:
        """System prompt + as many of the newest turns as fit beside the reply.

        The prompt may use `context_tokens - max_new_tokens` tokens; the oldest whole turns
        (a user message and the replies after it) go first. A system message in `history`
        replaces the default system prompt.
        """
        budget = self.context_tokens - max_new_tokens
        if budget <= 0:
            raise ContextTooLong(
                f"max_new_tokens ({max_new_tokens}) leaves no room for the prompt in the "
                f"{self.context_tokens}-token context"
            )
        system, turns = _split_history(history)
        if system is None:
            system = self.system_prompt
        head = [{"role": "system", "content": system}] if system else []
        starts = [i for i, m in enumerate(turns) if m["role"] == "user"]
        if starts[0] != 0:  # history opening with an assistant message: one more turn
            starts.insert(0, 0)

        def fits(start: int) -> bool:
            return len(self._encode(head + turns[start:])) <= budget

        if not fits(starts[-1]):
            needed = len(self._encode(head + turns[starts[-1] :]))
            raise ContextTooLong(
                f"The message is too long: with the system prompt it needs {needed} tokens, but "
                f"only {budget} fit (a {self.context_tokens}-token context minus "
                f"{max_new_tokens} for the reply). Shorten it and send again."
            )
        lo, hi = 0, len(starts) - 1  # the earliest turn start that fits (fits is monotone)
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(starts[mid]):
                hi = mid
            else:
                lo = mid + 1
        return head + turns[starts[lo] :]

    def generate(
        self, history: list[dict], params: SamplingParams, *, adapter: str | None = CURRENT
    ) -> ReplyInfo:
        """The whole reply at once (same as iterating `stream()` to the end)."""
        reply = self.stream(history, params, adapter=adapter)
        for _ in reply:
            pass
        assert reply.info is not None
        return reply.info

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens `messages` take through the chat template (with the reply header)."""
        return len(self._encode(messages))

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` through the chat template, ready for the reply."""
        with self._tok_lock:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # keep following CURRENT whatever happens once
                log.exception("adapter refresh failed")


def label(version: str | None) -> str:
    """How logs name a version."""
    return version if version is not None else "the bare base model"


def _split_history(history: list[dict]) -> tuple[str | None, list[dict[str, str]]]:
    """(system prompt from history or None, user/assistant turns), validated."""
    if not history:
        raise ServingError("Nothing to answer: the conversation is empty.")
    system: str | None = None
    turns: list[dict[str, str]] = []
    for message in history:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise ServingError(f"Unknown message role {role!r}; use one of {', '.join(_ROLES)}.")
        if not isinstance(content, str):
            raise ServingError(f"A {role} message must have text content.")
        if role == "system":
            system = content
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[-1]["role"] != "user":
        raise ServingError("The conversation must end with a user message.")
    return system, turns
