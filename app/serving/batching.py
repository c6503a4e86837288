"""Batched decoding: every reply in flight advances by one token in the same forward step.

One thread owns generation. Between steps it admits waiting requests (up to `max_batch`
rows): each new request's prompt is run on its own (prefill, with its own adapter), and its
key/value cache is appended to the batch's, left-padded to a common length. Then one
forward step decodes the next token of every row at once, each row with its own adapter
version through PEFT's mixed-adapter batches (`adapter_names`, one PEFT name per row,
`"__base__"` for the bare base), and each row sampled with its own temperature, top-p and
seed. Finished rows (end of turn, token budget, cancelled) leave the batch between steps.

Nothing one request carries can stop the loop: an exception while handling one row (its
seed, its sampling, its text) fails that row's reply alone, and an exception anywhere else
in the loop fails the rows in flight and restarts the loop, counted in `health` (shown by
`/v1/models` and `tuneloop status`), so other users' replies keep coming.

On a CPU a decode step costs nearly the same for 1 or 8 rows (the weights are read once
per step either way), so 8 chats stream almost as fast as one did. A row keeps the PEFT
name it was admitted with until it ends, whatever CURRENT does meanwhile: a hot switch
loads the new adapter between two steps (the engine's step lock, held by its per-step
hook) and only new requests get it.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.serving.adapters import AdapterPool
from app.serving.cpu_env import lower_thread_priority
from app.serving.replies import Reply, SamplingParams
from app.serving.sampling import sample_token, torch_seed

log = logging.getLogger(__name__)


class DecodingEngine(Protocol):
    """What the decoder uses of the engine it serves (app/serving/engine.py's ChatEngine)."""

    model: Any
    tokenizer: Any
    adapters: AdapterPool
    model_nice: int
    eos_ids: list[int]
    thread_state: threading.local  # the adapter a thread's forward passes use


BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
PREFIXES_KEPT = 8  # system-message caches kept (one per adapter and system prompt)
_STOP = object()


def torch_ones(ids: Any, length: int) -> Any:
    import torch

    return torch.ones((1, length), dtype=torch.long, device=ids.device)


@dataclass
class _Row:
    """One reply in the batch."""

    reply: Reply
    ids: list[int]
    key: str | None  # PEFT adapter name (None: the bare base)
    params: SamplingParams
    prefix: int = 0  # leading tokens that are the system message: computed once, reused
    generator: Any = None
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # decoded text already passed on


@dataclass
class DecoderHealth:
    """How often the decoding loop had to be restarted, and why the last time."""

    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "decoder_restarts": self.restarts,
            "decoder_last_error": self.last_error,
            "decoder_last_error_at": self.last_error_at,
        }


class BatchDecoder:
    """The generation thread of a ChatEngine that decodes concurrent replies together."""

    def __init__(self, engine: DecodingEngine, *, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.max_rows_seen = 0  # the largest batch so far (how much batching happened)
        self.health = DecoderHealth()
        self._rows: list[_Row] = []  # the rows in flight, for the supervisor to fail
        # (PEFT name, system-message ids) -> that prefix's keys/values per layer. Every chat
        # starts with the same system prompt (~350 tokens for the demo, most of a prompt);
        # computing it once per adapter makes a new reply's first step cost its own turns.
        self._prefixes: OrderedDict[tuple[str | None, tuple[int, ...]], list[Any]] = OrderedDict()

    # -- requests --------------------------------------------------------------------------
    def submit(
        self,
        reply: Reply,
        ids: list[int],
        key: str | None,
        params: SamplingParams,
        *,
        prefix: int = 0,
    ) -> None:
        """Queue a reply; it joins the batch before the next step. The first `prefix` ids
        (the system message) are computed once per adapter and reused by later replies."""
        self._inbox.put(_Row(reply=reply, ids=ids, key=key, params=params, prefix=prefix))
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                # Named like the one-generate-per-reply threads: it is the thread replies
                # are produced on, whichever engine runs.
                self._thread = threading.Thread(
                    target=self._run, name="tuneloop-reply-batch", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Let the rows in flight finish, then stop the thread (a new submit restarts it)."""
        with self._start_lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._inbox.put(_STOP)
            thread.join(timeout=60)

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        """Supervise the loop: a fault outside any one row fails the rows in flight, is
        counted, and the loop starts again on the requests still waiting. (Should the
        thread itself end some other way, the next request starts a new one.)"""
        while True:
            try:
                self._loop()
                return
            except BaseException as err:
                log.exception("the decoding loop failed; restarting it")
                for row in self._rows:
                    if not row.reply.has_ended:
                        self._end(row, error=err)
                self._rows = []
                self.health.restarts += 1
                self.health.last_error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
                self.health.last_error_at = time.time()
                if not isinstance(err, Exception):  # SystemExit and the like: let it end
                    raise
                time.sleep(0.05)  # a fault that repeats at once must not spin a core

    def _loop(self) -> None:
        import torch

        # The engine's per-step hook activates no adapter for this thread: every row names
        # its own adapter through `adapter_names`.
        self.engine.thread_state.key = None
        lower_thread_priority(self.engine.model_nice)
        rows: list[_Row] = []
        # Submitted rows not in the batch yet; people's turns are admitted before helper
        # calls (SamplingParams.priority), in arrival order within each.
        waiting: list[_Row] = []
        self._rows = rows
        state: dict[str, Any] = {"cache": None, "mask": None}
        stopping = False
        with torch.inference_mode():
            while True:
                if not rows and not waiting:
                    if stopping:
                        return
                    item = self._inbox.get()
                    if item is _STOP:
                        return
                    waiting.append(item)
                while True:
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                    else:
                        waiting.append(item)
                waiting.sort(key=lambda r: r.params.priority)  # stable: arrival order kept
                room = max(0, self.max_batch - len(rows))
                new, waiting = waiting[:room], waiting[room:]
                # every row a broken loop would strand, waiting ones included, is failed
                self._rows = rows + new + waiting
                for row in new:
                    if self._prefill(row, state):
                        rows.append(row)
                rows = self._settle(rows, state)
                self._rows = rows + waiting
                if not rows:
                    state["cache"] = state["mask"] = None
                    continue
                self.max_rows_seen = max(self.max_rows_seen, len(rows))
                try:
                    self._step(rows, state)
                except Exception as err:  # one failed step fails its rows, not the engine
                    log.exception("a batched decode step failed (%d rows)", len(rows))
                    for row in rows:
                        self._end(row, error=err)
                    rows = []
                    self._rows = list(waiting)
                    state["cache"] = state["mask"] = None
                    continue
                rows = self._settle(rows, state)
                self._rows = rows + waiting

    def _forward(self, **kwargs: Any) -> Any:
        """One forward pass, through PEFT (mixed adapters) once any adapter is loaded."""
        pool = self.engine.adapters
        names = kwargs.pop("names")
        peft = pool.peft
        if peft is not None and peft.peft_config:  # (a failed first load leaves none)
            return peft(**kwargs, adapter_names=[BASE if n is None else n for n in names])
        return self.engine.model(**kwargs)

    def _prefill(self, row: _Row, state: dict[str, Any]) -> bool:
        """Run a new row's prompt alone, sample its first token, add it to the batch."""
        import torch

        if row.reply.control.cancel.is_set():
            self._end(row, reason="cancelled")
            return False
        params = row.params
        try:
            if not params.greedy:  # inside the try: a seed torch refuses fails this row only
                seed = params.seed if params.seed is not None else secrets.randbits(63)
                row.generator = torch.Generator().manual_seed(torch_seed(seed))
            device = self.engine.model.device
            ids = torch.tensor([row.ids], device=device)
            out = self._forward(
                input_ids=ids[:, row.prefix :],
                attention_mask=torch.ones_like(ids),
                past_key_values=self._prefix_cache(row, ids),
                use_cache=True,
                logits_to_keep=1,
                names=[row.key],
            )
            token = sample_token(out.logits[0, -1, :], row.params, row.generator)
            self._merge(state, out.past_key_values, len(row.ids))
            self._advance(row, token)
        except Exception as err:
            log.exception("a reply's prompt step failed")
            self._end(row, error=err)
            return False
        return True

    def _prefix_cache(self, row: _Row, ids: Any) -> Any:
        """A cache holding the row's system-message prefix (None when it has none)."""
        if not row.prefix:
            return None
        from transformers import DynamicCache

        key = (row.key, tuple(row.ids[: row.prefix]))
        layers = self._prefixes.get(key)
        if layers is None:
            out = self._forward(
                input_ids=ids[:, : row.prefix],
                attention_mask=torch_ones(ids, row.prefix),
                use_cache=True,
                logits_to_keep=1,
                names=[row.key],
            )
            # never changed in place later: every cache update makes new tensors
            layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            self._prefixes[key] = layers
            while len(self._prefixes) > PREFIXES_KEPT:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(key)
        return DynamicCache(ddp_cache_data=layers, config=self.engine.model.config)

    def _step(self, rows: list[_Row], state: dict[str, Any]) -> None:
        """One decode step for every row."""
        import torch

        device = self.engine.model.device
        mask = torch.cat(
            [state["mask"], torch.ones((len(rows), 1), dtype=state["mask"].dtype, device=device)],
            dim=1,
        )
        last = torch.tensor([[row.tokens[-1]] for row in rows], device=device)
        out = self._forward(
            input_ids=last,
            attention_mask=mask,
            position_ids=mask.sum(dim=1, keepdim=True) - 1,
            past_key_values=state["cache"],
            use_cache=True,
            logits_to_keep=1,
            names=[row.key for row in rows],
        )
        state["cache"], state["mask"] = out.past_key_values, mask
        logits = out.logits[:, -1, :]
        greedy = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            try:  # one row's sampling or text failing ends that row; the others go on
                token = (
                    greedy[i]
                    if row.params.greedy
                    else sample_token(logits[i], row.params, row.generator)
                )
                self._advance(row, int(token))
            except Exception as err:
                log.exception("a reply failed in a decode step")
                self._end(row, error=err)

    # -- rows in and out of the batch --------------------------------------------------------
    def _merge(self, state: dict[str, Any], cache: Any, length: int) -> None:
        """Append a one-row cache to the batch's, left-padding the shorter side."""
        import torch
        import torch.nn.functional as F

        device = self.engine.model.device
        ones = torch.ones((1, length), dtype=torch.long, device=device)
        if state["cache"] is None:
            state["cache"], state["mask"] = cache, ones
            return
        batch, mask = state["cache"], state["mask"]
        width = max(mask.shape[1], length)
        grow_batch, grow_new = width - mask.shape[1], width - length
        for mine, theirs in zip(batch.layers, cache.layers, strict=True):
            mine.keys = torch.cat(
                [F.pad(mine.keys, (0, 0, grow_batch, 0)), F.pad(theirs.keys, (0, 0, grow_new, 0))]
            )
            mine.values = torch.cat(
                [
                    F.pad(mine.values, (0, 0, grow_batch, 0)),
                    F.pad(theirs.values, (0, 0, grow_new, 0)),
                ]
            )
        state["mask"] = torch.cat([F.pad(mask, (grow_batch, 0)), F.pad(ones, (grow_new, 0))])

    def _settle(self, rows: list[_Row], state: dict[str, Any]) -> list[_Row]:
        """Drop finished rows from the batch (and padding no row needs any more)."""
        keep = [i for i, row in enumerate(rows) if not self._finished(row)]
        if len(keep) == len(rows):
            return rows
        if not keep:
            state["cache"] = state["mask"] = None
            return []
        import torch

        index = torch.tensor(keep, device=state["mask"].device)
        mask = state["mask"].index_select(0, index)
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # first column any row still uses
        for layer in state["cache"].layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]
        state["mask"] = mask[:, start:]
        return [rows[i] for i in keep]

    def _finished(self, row: _Row) -> bool:
        if row.reply.has_ended:
            return True
        control = row.reply.control
        if row.tokens and row.tokens[-1] in self.engine.eos_ids:
            self._end(row, reason="stop")
        elif len(row.tokens) >= row.params.max_new_tokens:
            self._end(row, reason="length")
        elif control.cancel.is_set():
            self._end(row, reason="cancelled")
        else:
            return False
        return True

    def _advance(self, row: _Row, token: int) -> None:
        """Add a sampled token to a row and pass on the text it completes."""
        row.tokens.append(token)
        row.reply.control.generated = len(row.tokens)
        ids = row.tokens[:-1] if token in self.engine.eos_ids else row.tokens
        text = self.engine.tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(row.sent):
            return  # half a character, or a re-spelling of earlier text: wait for more
        piece, row.sent = text[len(row.sent) :], text
        row.reply.streamer.put_text(piece)

    def _end(self, row: _Row, *, reason: str = "stop", error: BaseException | None = None) -> None:
        reply = row.reply
        reply.ended(new_tokens=len(row.tokens), reason=reason, error=error)
        self.engine.adapters.release(reply.adapter_version)
        reply.done.set()
        reply.streamer.end()
