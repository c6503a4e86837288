"""What a chat request is and what comes back: sampling parameters, the streamed reply,
the record of a finished reply, and the errors a request can meet.

Both engines (`app/serving/engine.py`'s one-generate-loop-per-reply path and
`app/serving/batching.py`'s batched decoder) hand out the same `Reply`, so the page and the API
stream from either the same way. No torch at import time: `tuneloop serve` tunes OpenMP before
torch loads.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from app.serving.json_answer import json_answer_over

GREEDY_BELOW = 1e-4  # a temperature under this decodes greedily


@dataclass(frozen=True)
class SamplingParams:
    """How a reply is sampled. `temperature` 0 means greedy (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = ()  # the reply ends before the first of these (not included)
    seed: int | None = None  # sampling seed: the same seed and prompt give the same reply
    # When the batch is full, lower goes first: people's turns 0, a front end's helper calls
    # (titles, tags) 1, so those never hold a person's reply back.
    priority: int = 0
    # The reply must be one JSON object (a front end's helper call): it ends once that
    # object closes, or early when none begins (app/serving/json_answer.py).
    json_answer: bool = False

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
        # scores divided by a temperature this small overflow to inf (NaN probabilities),
        # and any sample from them would be the top token anyway
        return self.temperature < GREEDY_BELOW

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for storage next to the reply (stop and seed only when set)."""
        out = asdict(self)
        if not self.stop:
            del out["stop"]
        else:
            out["stop"] = list(self.stop)
        if self.seed is None:
            del out["seed"]
        if not self.priority:
            del out["priority"]
        if not self.json_answer:
            del out["json_answer"]
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
        # The engine's side: the text queue it fills and the control it stops on.
        self.streamer = streamer
        self.control = control
        self._started = started
        self.done = threading.Event()  # set by the engine once generation has stopped
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
        complete = over = False
        cut = StopFilter(self._params.stop)
        try:
            for piece in self.streamer:
                out = cut.feed(piece) if piece else ""
                if out:
                    self.text += out
                    yield out
                # a stop sequence (the reply is complete without it), or a JSON answer whose
                # object has closed or never began (app/serving/json_answer.py)
                over = cut.stopped or (self._params.json_answer and json_answer_over(self.text))
                if over:
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
        self.done.wait()
        if self._error is not None:
            err = self._error
            raise ServingError(f"generation failed ({type(err).__name__}: {err})") from err
        if over:
            self._finish_reason = "stop"
            self._new_tokens = self.control.generated
        self._finish(cancelled=False)

    def ended(self, *, new_tokens: int, reason: str, error: BaseException | None = None) -> None:
        """The engine's record of how generation ended: tokens made, why it stopped ("stop",
        "length", "cancelled"), and the error that ended it, if any."""
        self._new_tokens = new_tokens
        self._finish_reason = reason
        self._error = error
        self._finished_at = time.perf_counter()

    @property
    def has_ended(self) -> bool:
        """Whether the engine recorded the end of generation (`ended`)."""
        return self._finished_at is not None

    def cancel(self) -> None:
        """Stop generating after the current step (safe from any thread)."""
        self.control.cancel.set()

    def _finish(self, *, cancelled: bool) -> None:
        end = self._finished_at if self._finished_at is not None else time.perf_counter()
        first = self.streamer.first_text_at
        self.info = ReplyInfo(
            text=self.text,
            model_name=self._model_name,
            adapter_version=self.adapter_version,
            params=self._params.as_dict(),
            prompt=self._prompt,
            latency_ms=(end - self._started) * 1000,
            ttft_ms=None if first is None else (first - self._started) * 1000,
            new_tokens=self.control.generated if cancelled else self._new_tokens,
            finish_reason="cancelled" if cancelled else self._finish_reason,
        )


def new_streamer(tokenizer: Any) -> Any:
    """A TextIteratorStreamer that also notes when its first text was ready."""
    return _classes()[0](tokenizer, skip_prompt=True, skip_special_tokens=True)


def new_control(prompt_len: int) -> Any:
    """A stopping criterion that stops on cancel() and counts tokens so far."""
    return _classes()[1](prompt_len)


@functools.cache
def _classes() -> tuple[type, type]:
    """Subclasses of transformers' streamer and stopping criterion, made on first use so
    that importing this module stays light (app/serving/chat.py imports it at startup)."""
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


class QueueStreamer:
    """Text pieces from the batched decoder's thread to the Reply's consumer, in order.

    The same face as transformers' TextIteratorStreamer (iterate; `end()`; and
    `first_text_at`, when the first text was ready), so `Reply` reads either.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.first_text_at: float | None = None

    def put_text(self, text: str) -> None:
        if text:
            if self.first_text_at is None:
                self.first_text_at = time.perf_counter()
            self._queue.put(text)

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while (item := self._queue.get()) is not None:
            yield item


def answered_reply(
    text: str, *, params: SamplingParams, prompt: list[dict[str, str]], model_name: str
) -> Reply:
    """A Reply that is already complete with `text`, for an answer made without the model
    (app/serving/helper_answers.py); it streams and finishes like a decoded one."""
    streamer = QueueStreamer()
    streamer.put_text(text)
    streamer.end()
    control = _Answered()
    reply = Reply(
        version=None,
        params=params,
        prompt=prompt,
        model_name=model_name,
        streamer=streamer,
        control=control,
        started=time.perf_counter(),
    )
    reply.ended(new_tokens=0, reason="stop")
    reply.done.set()
    return reply


class _Answered:
    """The control of a reply no model decodes: nothing to cancel, no token generated."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.generated = 0
