"""Stream chat replies from the base model plus a LoRA adapter, switching adapters live.

One base model is loaded once. Adapter versions from the registry are loaded into it as
named PEFT LoRA adapters, side by side, and a pair of forward hooks picks the adapter for
each forward step:

- every reply runs `model.generate` in its own worker thread, and that thread records
  (thread-local) the adapter its reply was given when it started;
- the pre-hook takes the model's step lock and, only if a different adapter is active,
  activates this reply's adapter (or none, for the bare base); the post-hook, registered
  with `always_call=True`, releases the lock even when the forward raises.

So forward steps of concurrent replies are serialised, each step runs with its own reply's
adapter, and a reply is produced by exactly one version from its first token to its last,
whatever CURRENT does meanwhile. Switching versions is just another adapter load (under
the same lock, so no step sees a half-loaded adapter) and a new default for new replies.
The hooks cost ~2 us per step (a SmolLM2 step on 2 CPU cores is ~80 ms); when consecutive
steps belong to different versions, one pass over the LoRA layers (~0.5 ms) switches them.
tests/test_serving_slow.py measures both against plain `model.generate`.

Which adapters are loaded, their eviction and the cheap switch itself live in
`app/adapters.py`; this module owns prompts, generation threads and following CURRENT.
No gradio here: `app/ui.py` and `app/chat.py` drive this module.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.adapters import AdapterError, AdapterPool
from training.registry import Registry, RegistryError

log = logging.getLogger(__name__)

CURRENT = "CURRENT"  # as `adapter=`: whatever the registry pointer names right now

# How long an idle OpenMP worker of torch's CPU kernels busy-waits for the next parallel
# region before it sleeps. libgomp's default (300,000 spins, milliseconds) keeps the
# workers spinning through every gap of a generation step; on the 2-core reference machine
# that spinning was ~40% of the CPU a reply took (SmolLM2: 117 -> 68 CPU-ms per token at
# the same tokens/s), CPU the web server, the store and the other chats needed. Set before
# torch loads, and only where the operator has not set it.
SERVING_THREAD_ENV = {"GOMP_SPINCOUNT": "2000"}
_TUNED: dict[str, str] = {}  # what tune_cpu_threads set in os.environ
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SamplingParams:
    """How a reply is sampled. `temperature` 0 means greedy (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = ()  # the reply ends before the first of these (not included)
    seed: int | None = None  # sampling seed: the same seed and prompt give the same reply

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for storage next to the reply (stop and seed only when set)."""
        out = asdict(self)
        if not self.stop:
            del out["stop"]
        else:
            out["stop"] = list(self.stop)
        if self.seed is None:
            del out["seed"]
        return out


class StopFilter:
    """Cuts a streamed text at the first stop sequence, holding back text that might be
    the start of one, so a client never sees part of a stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # everything received
        self.sent = 0  # characters of `text` passed on
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be passed on after `piece` arrived ("" once stopped)."""
        if self.stopped:
            return ""
        start = max(0, len(self.text) - self.hold)
        self.text += piece
        if not self.stops:
            return self._upto(len(self.text))
        cuts = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            self.text = self.text[: min(cuts)]
            return self._upto(len(self.text))
        return self._upto(len(self.text) - self.hold)

    def flush(self) -> str:
        """What was held back, at the end of the stream."""
        return self._upto(len(self.text))

    def _upto(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : end], end
        return out


@dataclass
class ReplyInfo:
    """Everything worth storing about a finished reply."""

    text: str
    model_name: str
    adapter_version: str | None  # the version that produced every token; None = bare base
    params: dict[str, Any]
    prompt: list[dict[str, str]]  # the exact messages sent: system + trimmed history
    latency_ms: float  # request start to last token
    ttft_ms: float | None  # request start to first text; None if the reply is empty
    new_tokens: int
    finish_reason: str = "stop"  # "stop" (end of turn), "length" (max_new_tokens), "cancelled"


class ServingError(Exception):
    """A user-facing serving problem: message too long, adapter unusable, generation failed."""


class ContextTooLong(ServingError):
    """The prompt and the reply's token budget do not fit the model's context."""


class Reply:
    """A reply being generated. Iterate it for the new text pieces as they arrive.

    `text` is everything received so far; `info` is set once the reply has finished (or
    was cancelled); `adapter_version` is fixed when the request starts. A Reply is
    iterated once; leaving the loop early (or `cancel()`) stops generation.
    """

    def __init__(
        self,
        *,
        version: str | None,
        params: SamplingParams,
        prompt: list[dict[str, str]],
        model_name: str,
        streamer: Any,
        control: Any,
        started: float,
    ) -> None:
        self.text = ""
        self.info: ReplyInfo | None = None
        self.adapter_version = version
        self._params = params
        self._prompt = prompt
        self._model_name = model_name
        self._streamer = streamer
        self._control = control
        self._started = started
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._finished_at: float | None = None
        self._new_tokens = 0
        self._finish_reason = "stop"
        self._consumed = False

    def __iter__(self) -> Iterator[str]:
        """Yield new text pieces (deltas); raises ServingError if generation fails."""
        if self._consumed:
            return
        self._consumed = True
        complete = False
        cut = StopFilter(self._params.stop)
        try:
            for piece in self._streamer:
                out = cut.feed(piece) if piece else ""
                if out:
                    self.text += out
                    yield out
                if cut.stopped:  # a stop sequence: the reply is complete without it
                    self.cancel()
                    break
            rest = cut.flush()
            if rest:
                self.text += rest
                yield rest
            complete = True
        finally:
            if not complete:  # the consumer stopped listening: stop generating
                self.cancel()
                self._finish(cancelled=True)
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            err = self._error
            raise ServingError(f"generation failed ({type(err).__name__}: {err})") from err
        if cut.stopped:
            self._finish_reason = "stop"
            self._new_tokens = self._control.generated
        self._finish(cancelled=False)

    def cancel(self) -> None:
        """Stop generating after the current step (safe from any thread)."""
        self._control.cancel.set()

    def _finish(self, *, cancelled: bool) -> None:
        end = self._finished_at if self._finished_at is not None else time.perf_counter()
        first = self._streamer.first_text_at
        self.info = ReplyInfo(
            text=self.text,
            model_name=self._model_name,
            adapter_version=self.adapter_version,
            params=self._params.as_dict(),
            prompt=self._prompt,
            latency_ms=(end - self._started) * 1000,
            ttft_ms=None if first is None else (first - self._started) * 1000,
            new_tokens=self._control.generated if cancelled else self._new_tokens,
            finish_reason="cancelled" if cancelled else self._finish_reason,
        )


class ChatEngine:
    """The base model with registry adapters, streaming replies and following CURRENT.

    Loading takes the model's own time (~3 s for the converted SmolLM2). Call `start()` to
    follow the CURRENT pointer in the background, `close()` to stop. Thread-safe: any
    number of replies may stream at once, each with the version it started with.
    """

    def __init__(
        self,
        model_dir: Path,
        registry: Registry,
        *,
        system_prompt: str = "",
        context_tokens: int = 2048,
        load_in_4bit: bool = False,
        poll_seconds: float = 1.0,
        model_name: str | None = None,
        max_adapters: int = 3,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.registry = registry
        self.system_prompt = system_prompt
        self.poll_seconds = poll_seconds
        self.model_name = model_name or self.model_dir.name
        self.tokenizer, self.model = _load_model(self.model_dir, load_in_4bit)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.context_tokens = min(context_tokens, limit) if limit else context_tokens
        self._eos_ids = _eos_ids(self.tokenizer, self.model)
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._eos_ids[0]

        self.adapters = AdapterPool(self.model, registry, max_adapters=max_adapters)
        self._refused: str | None = None  # CURRENT named this and it failed to load
        self._tok_lock = threading.Lock()
        self._local = threading.local()
        self._hooks = [
            self.model.register_forward_pre_hook(self._before_step),
            self.model.register_forward_hook(self._after_step, always_call=True),
        ]
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.refresh()  # serve what CURRENT names now (an unusable version is logged, skipped)

    # -- versions ------------------------------------------------------------------------
    def serving_version(self) -> str | None:
        """The version new requests get now (None: the bare base model)."""
        return self.adapters.serving

    def loaded_versions(self) -> list[str]:
        """Versions whose adapters are in memory now."""
        return self.adapters.loaded()

    def refresh(self) -> bool:
        """Read CURRENT now; load and switch to the version it names. True if it switched.

        A version that fails verification or loading is refused: the engine keeps serving
        what it had, logs why once, and tries again only after CURRENT changes.
        """
        pool = self.adapters
        with pool.admin:
            try:
                pointer = self.registry.current()
            except (OSError, RegistryError) as err:
                log.warning("could not read the CURRENT pointer: %s", err)
                return False
            if pointer == pool.serving:
                self._refused = None
                pool.evict()
                return False
            if pointer is not None and pointer == self._refused:
                return False
            if pointer is not None and pointer not in pool.keys:
                try:
                    pool.load(pointer)
                except AdapterError as err:
                    self._refused = pointer
                    log.error(
                        "CURRENT names %r but it cannot be served; still serving %s. %s",
                        pointer,
                        _label(pool.serving),
                        err,
                    )
                    return False
            with pool.state:
                previous, pool.serving = pool.serving, pointer
                if pointer is not None:
                    pool.touch(pointer)
            self._refused = None
            log.info("now serving %s (was %s)", _label(pointer), _label(previous))
            pool.evict()
            return True

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

    def __enter__(self) -> ChatEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- prompts -------------------------------------------------------------------------
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

    # -- generation ----------------------------------------------------------------------
    def stream(
        self, history: list[dict], params: SamplingParams, *, adapter: str | None = CURRENT
    ) -> Reply:
        """Start a reply to `history` (ending with a user turn) and return it at once.

        `adapter`: CURRENT (the serving version), None (the bare base) or a registered
        version, loaded on demand. Raises ServingError before generating if the prompt
        cannot fit or the version cannot be used.
        """
        started = time.perf_counter()
        prompt = self.build_prompt(history, params.max_new_tokens)
        ids = self._encode(prompt)
        version, key = self._acquire(adapter)
        try:
            streamer = _streamer(self.tokenizer)
            control = _control(len(ids))
            reply = Reply(
                version=version,
                params=params,
                prompt=prompt,
                model_name=self.model_name,
                streamer=streamer,
                control=control,
                started=started,
            )
            reply._thread = threading.Thread(
                target=self._generate,
                args=(reply, ids, key, params),
                name=f"tuneloop-reply-{_label(version)}",
                daemon=True,
            )
            reply._thread.start()
        except BaseException:
            self.adapters.release(version)
            raise
        return reply

    def generate(
        self, history: list[dict], params: SamplingParams, *, adapter: str | None = CURRENT
    ) -> ReplyInfo:
        """The whole reply at once (same as iterating `stream()` to the end)."""
        reply = self.stream(history, params, adapter=adapter)
        for _ in reply:
            pass
        assert reply.info is not None
        return reply.info

    def _generate(
        self, reply: Reply, ids: list[int], key: str | None, params: SamplingParams
    ) -> None:
        """Worker thread: run model.generate with this reply's adapter on every step."""
        import torch

        self._local.key = key
        try:
            input_ids = torch.tensor([ids], device=self.model.device)
            kwargs: dict[str, Any] = {
                "max_new_tokens": params.max_new_tokens,
                "do_sample": not params.greedy,
                "eos_token_id": self._eos_ids,
                "pad_token_id": self._pad_id,
                "streamer": reply._streamer,
                "stopping_criteria": [reply._control],
                "disable_compile": True,
            }
            if not params.greedy:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
                if params.seed is not None:
                    torch.manual_seed(params.seed)
            with torch.inference_mode():  # no autograd bookkeeping on any op of any step
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
                )
            new = out[0, len(ids) :].tolist()
            reply._new_tokens = len(new)
            if new and new[-1] in self._eos_ids:
                reply._finish_reason = "stop"
            elif reply._control.cancel.is_set() and len(new) < params.max_new_tokens:
                reply._finish_reason = "cancelled"
            else:
                reply._finish_reason = "length"
        except Exception as err:
            log.exception("generation failed (adapter %s)", _label(reply.adapter_version))
            reply._error = err
            reply._streamer.end()  # wake the consumer; it raises ServingError
        finally:
            reply._finished_at = time.perf_counter()
            del self._local.key
            self.adapters.release(reply.adapter_version)

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

    # -- the per-step adapter switch -----------------------------------------------------
    def _before_step(self, module: Any, args: Any) -> None:
        pool = self.adapters
        try:
            key: str | None = self._local.key
        except AttributeError:  # a step not started by one of our replies: serving version
            key = pool.serving_key()
        pool.step.acquire()
        self._local.holds_step = True
        if key != pool.active:
            try:
                pool.activate(key)
            except BaseException:
                self._local.holds_step = False
                pool.step.release()
                raise

    def _after_step(self, module: Any, args: Any, output: Any) -> None:
        if getattr(self._local, "holds_step", False):
            self._local.holds_step = False
            self.adapters.step.release()

    def _acquire(self, adapter: str | None) -> tuple[str | None, str | None]:
        """Resolve `adapter` (CURRENT, None or a version) to (version, PEFT name), pinned."""
        if adapter is not None and not isinstance(adapter, str):
            raise ServingError(f"adapter must be CURRENT, None or a version name, not {adapter!r}")
        version = self.adapters.serving if adapter == CURRENT else adapter
        try:
            return version, self.adapters.acquire(version)
        except AdapterError as err:
            raise ServingError(str(err)) from err

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # keep following CURRENT whatever happens once
                log.exception("adapter refresh failed")


# -- helpers ---------------------------------------------------------------------------
def tune_cpu_threads(environ: Any = None) -> dict[str, str]:
    """Apply SERVING_THREAD_ENV where unset (call before torch is imported); returns what
    was set. Has no effect once torch is loaded, so `tuneloop serve` calls it first."""
    environ = os.environ if environ is None else environ
    applied = {}
    for name, value in SERVING_THREAD_ENV.items():
        if name not in environ:
            environ[name] = applied[name] = value
    if environ is os.environ:
        _TUNED.update(applied)
    return applied


def untuned_environ() -> dict[str, str]:
    """This process's environment without what `tune_cpu_threads` set in it: for the
    training rounds the server starts, which the serving setting was not measured for."""
    return {k: v for k, v in os.environ.items() if _TUNED.get(k) != v}


def _label(version: str | None) -> str:
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


def _load_model(model_dir: Path, load_in_4bit: bool) -> tuple[Any, Any]:
    """Tokenizer and causal LM from a local dir, loaded as `tuneloop generate` loads them
    (fp32 on CPU, the checkpoint dtype on GPU), so a chat reply and a batch reply match."""
    from training.generate import GenerationError, load_for_generation

    try:
        model, tokenizer = load_for_generation(model_dir, load_in_4bit=load_in_4bit)
    except GenerationError as err:
        raise ServingError(str(err)) from err
    return tokenizer, model


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's eos and the generation config's."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    if not ids:
        raise ServingError("the model defines no end-of-sequence token")
    return ids


def _streamer(tokenizer: Any) -> Any:
    """A TextIteratorStreamer that also notes when its first text was ready."""
    return _classes()[0](tokenizer, skip_prompt=True, skip_special_tokens=True)


def _control(prompt_len: int) -> Any:
    """A stopping criterion that stops on cancel() and counts tokens so far."""
    return _classes()[1](prompt_len)


@functools.cache
def _classes() -> tuple[type, type]:
    """Subclasses of transformers' streamer and stopping criterion, made on first use so
    that importing this module stays light (app/chat.py imports it at startup)."""
    import torch
    from transformers import StoppingCriteria, TextIteratorStreamer

    class Streamer(TextIteratorStreamer):
        first_text_at: float | None = None

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text and self.first_text_at is None:
                self.first_text_at = time.perf_counter()
            super().on_finalized_text(text, stream_end=stream_end)

    class Control(StoppingCriteria):
        def __init__(self, prompt_len: int) -> None:
            self.prompt_len = prompt_len
            self.cancel = threading.Event()
            self.generated = 0

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.generated = int(input_ids.shape[1]) - self.prompt_len
            stop = self.cancel.is_set()
            return torch.full(
                (input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device
            )

    return Streamer, Control
