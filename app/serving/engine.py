"""The chat engine: base model plus LoRA adapters, prompts, and following CURRENT live.

One base model is loaded once. Adapter versions from the registry are loaded into it as
named PEFT LoRA adapters, side by side (`app/serving/adapters.py`), and a reply keeps the version
it started with from its first token to its last, whatever CURRENT does meanwhile.
Switching versions is just another adapter load, under the model's step lock, so no step
sees a half-loaded adapter, and a new default for new replies.

Replies are decoded in one of two ways (`max_batch`):

- batched (the default, `app/serving/batching.py`): one thread decodes every reply in flight in
  the same forward step, each row with its own adapter (PEFT mixed-adapter batches);
- one generate loop per reply (`max_batch=0`): every reply runs `model.generate` in its
  own thread, recorded thread-locally with its adapter; a pre-hook takes the step lock and
  activates that adapter, a post-hook (`always_call=True`) releases the lock. Steps of
  concurrent replies are serialised; the hooks cost ~2 us per step.

The request and reply types are in `app/serving/replies.py`, the CPU environment set before torch
loads in `app/serving/cpu_env.py`. No gradio here: `app/web/ui.py` and `app/serving/chat.py`
drive this.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from app.serving.adapters import AdapterError, AdapterPool
from app.serving.batching import BatchDecoder, DecoderHealth
from app.serving.cpu_env import lower_thread_priority
from app.serving.engine_base import CURRENT, EngineBase, label
from app.serving.replies import (
    ContextTooLong,
    QueueStreamer,
    Reply,
    ReplyInfo,
    SamplingParams,
    ServingError,
    new_control,
    new_streamer,
)
from app.serving.sampling import torch_seed
from training.registry import Registry

__all__ = [  # the request/response types live in app/serving/replies.py; callers import them here
    "CURRENT",
    "ChatEngine",
    "ContextTooLong",
    "Reply",
    "ReplyInfo",
    "SamplingParams",
    "ServingError",
]

log = logging.getLogger(__name__)


class ChatEngine(EngineBase):
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
        bf16: bool | None = None,
        poll_seconds: float = 1.0,
        model_name: str | None = None,
        max_adapters: int = 3,
        max_batch: int = 8,
        model_nice: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model_nice = model_nice  # nice steps for the threads that decode
        self.tokenizer, self.model = _load_model(self.model_dir, load_in_4bit, bf16)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        super().__init__(
            registry,
            system_prompt=system_prompt,
            context_tokens=min(context_tokens, limit) if limit else context_tokens,
            poll_seconds=poll_seconds,
            model_name=model_name or self.model_dir.name,
        )
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self.eos_ids[0]

        self.adapters = AdapterPool(self.model, registry, max_adapters=max_adapters)
        # max_batch > 0: concurrent replies are decoded together (app/serving/batching.py);
        # 0: each reply runs its own generate loop, one forward step at a time.
        if max_batch and getattr(self.model.config, "sliding_window", None):
            # the batcher pads plain key/value caches; sliding-window layers keep their own
            log.warning("%s uses sliding-window attention: replies are not batched", model_dir)
            max_batch = 0
        self._batcher = BatchDecoder(self, max_batch=max_batch) if max_batch > 0 else None
        self._system_ids: dict[str, list[int]] = {}  # system prompt -> its tokens alone
        self.thread_state = threading.local()
        self._hooks = [
            self.model.register_forward_pre_hook(self._before_step),
            self.model.register_forward_hook(self._after_step, always_call=True),
        ]
        self.refresh()  # serve what CURRENT names now (an unusable version is logged, skipped)

    def close(self) -> None:
        """Stop following CURRENT. Replies in flight still finish."""
        super().close()
        if self._batcher is not None:
            self._batcher.close()

    def health(self) -> dict[str, object]:
        """Restarts of the decoding loop and the last fault (one-loop replies have no shared
        loop: a fault there fails its own reply and is never a restart)."""
        batcher = self._batcher
        return (batcher.health if batcher is not None else DecoderHealth()).as_dict()

    # -- versions ------------------------------------------------------------------------
    def serving_version(self) -> str | None:
        """The version new requests get now (None: the bare base model)."""
        return self.adapters.serving

    def versions_lock(self) -> Any:
        """The adapter pool's admin lock: one load or switch at a time."""
        return self.adapters.admin

    def load_version(self, version: str) -> None:
        """Load `version` into the adapter pool unless it is there (ServingError if not)."""
        if version not in self.adapters.keys:
            try:
                self.adapters.load(version)
            except AdapterError as err:
                raise ServingError(str(err)) from err

    def switch_to(self, version: str | None) -> None:
        pool = self.adapters
        with pool.state:
            pool.serving = version
            if version is not None:
                pool.touch(version)

    def tidy_versions(self) -> None:
        self.adapters.evict()

    # -- prompts -------------------------------------------------------------------------
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
            batcher = self._batcher
            reply = Reply(
                version=version,
                params=params,
                prompt=prompt,
                model_name=self.model_name,
                streamer=new_streamer(self.tokenizer) if batcher is None else QueueStreamer(),
                control=new_control(len(ids)),
                started=started,
            )
            if batcher is not None:
                batcher.submit(reply, ids, key, params, prefix=self._system_prefix(prompt, ids))
                return reply
            threading.Thread(
                target=self._generate,
                args=(reply, ids, key, params),
                name=f"tuneloop-reply-{label(version)}",
                daemon=True,
            ).start()
        except BaseException:
            self.adapters.release(version)
            raise
        return reply

    def _generate(
        self, reply: Reply, ids: list[int], key: str | None, params: SamplingParams
    ) -> None:
        """Worker thread: run model.generate with this reply's adapter on every step."""
        import torch

        self.thread_state.key = key
        lower_thread_priority(self.model_nice)
        new_tokens, reason, error = 0, "stop", None
        try:
            input_ids = torch.tensor([ids], device=self.model.device)
            kwargs: dict[str, Any] = {
                "max_new_tokens": params.max_new_tokens,
                "do_sample": not params.greedy,
                "eos_token_id": self.eos_ids,
                "pad_token_id": self._pad_id,
                "streamer": reply.streamer,
                "stopping_criteria": [reply.control],
                "disable_compile": True,
            }
            if not params.greedy:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
                if params.seed is not None:
                    torch.manual_seed(torch_seed(params.seed))
            with torch.inference_mode():  # no autograd bookkeeping on any op of any step
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
                )
            new = out[0, len(ids) :].tolist()
            new_tokens = len(new)
            if new and new[-1] in self.eos_ids:
                reason = "stop"
            elif reply.control.cancel.is_set() and len(new) < params.max_new_tokens:
                reason = "cancelled"
            else:
                reason = "length"
        except Exception as err:
            log.exception("generation failed (adapter %s)", label(reply.adapter_version))
            error = err
            reply.streamer.end()  # wake the consumer; it raises ServingError
        finally:
            reply.ended(new_tokens=new_tokens, reason=reason, error=error)
            del self.thread_state.key
            self.adapters.release(reply.adapter_version)
            reply.done.set()

    def _system_prefix(self, prompt: list[dict[str, str]], ids: list[int]) -> int:
        """How many leading `ids` are the prompt's system message alone (0: none, or the
        template does not render it the same on its own), for the batcher's prefix cache."""
        if not prompt or prompt[0]["role"] != "system":
            return 0
        system = prompt[0]["content"]
        head = self._system_ids.get(system)
        if head is None:
            with self._tok_lock:
                text = self.tokenizer.apply_chat_template(
                    prompt[:1], add_generation_prompt=False, tokenize=False
                )
                head = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._system_ids) >= 16:
                self._system_ids.clear()
            self._system_ids[system] = head
        n = len(head)
        return n if 0 < n < len(ids) and ids[:n] == head else 0

    # -- the per-step adapter switch -----------------------------------------------------
    def _before_step(self, module: Any, args: Any) -> None:
        pool = self.adapters
        try:
            key: str | None = self.thread_state.key
        except AttributeError:  # a step not started by one of our replies: serving version
            key = pool.serving_key()
        pool.step.acquire()
        self.thread_state.holds_step = True
        if key != pool.active:
            try:
                pool.activate(key)
            except BaseException:
                self.thread_state.holds_step = False
                pool.step.release()
                raise

    def _after_step(self, module: Any, args: Any, output: Any) -> None:
        if getattr(self.thread_state, "holds_step", False):
            self.thread_state.holds_step = False
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


# -- helpers ---------------------------------------------------------------------------
def _load_model(model_dir: Path, load_in_4bit: bool, bf16: bool | None) -> tuple[Any, Any]:
    """Tokenizer and causal LM from a local dir, loaded as `tuneloop generate` loads them
    (training/device/precision.py inference_dtype), so a chat reply and a batch reply match."""
    from training.eval.generate import GenerationError, load_for_generation

    try:
        model, tokenizer = load_for_generation(model_dir, load_in_4bit=load_in_4bit, bf16=bf16)
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
