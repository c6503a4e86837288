"""Batch generation: many conversations answered by the base model or one adapter version.

This is the offline path (`tuneloop generate`, `tuneloop eval`, a training round's own
evaluation), separate from the chat server's streaming engine in `app/serving/engine.py`: the
conversations are left-padded into batches and run through one plain `model.generate` call
per batch, greedy by default, so a rerun gives the same replies.

Prompts go through the tokenizer's chat template exactly as the chat app sends them, and
they are sorted by length before batching (and put back in order afterwards) so that a
batch holds prompts of similar length: less padding, and fewer rows that keep stepping
after their reply has ended while a longer one finishes.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Measured on a 2-core CPU (SmolLM2-135M in bf16, 48 prompts, 96 new tokens): a decoding step
# costs about the same at 8 rows as at 24, so replies/s rose 1.4x (~370-token prompts) and
# 2.9x (short ones) from 8 to 24 rows a batch, and flattened beyond.
CPU_BATCH_SIZE = 24
GPU_BATCH_SIZE = 32

ROLES = ("system", "user", "assistant")
# What `generate` adds to each input row (an input row's own keys of these names are replaced).


@dataclass(frozen=True)
class GenParams:
    """How replies are generated, the settings of `generate`, `eval` and the gate's eval
    sets travelling as one (all but batch_size are part of an eval's cache key)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    batch_size: int | None = None


def token_ids(value: Any) -> list[int]:
    """The token ids of what a tokenizer returned: a plain list, or a mapping (a
    BatchEncoding) holding them under "input_ids", as `apply_chat_template` gives in turn."""
    if isinstance(value, dict) or hasattr(value, "input_ids"):
        value = value["input_ids"]
    return list(value)


class GenerationError(Exception):
    """A user-facing batch-generation problem: bad conversation, model or adapter."""


def default_batch_size(model: Any = None) -> int:
    """Rows per batch when the caller names none: small on a CPU, larger on a GPU."""
    device = getattr(model, "device", None)
    if device is not None:
        return GPU_BATCH_SIZE if getattr(device, "type", "cpu") == "cuda" else CPU_BATCH_SIZE
    import torch

    return GPU_BATCH_SIZE if torch.cuda.is_available() else CPU_BATCH_SIZE


def load_for_generation(
    model_dir: Path,
    adapter_dir: Path | None = None,
    *,
    load_in_4bit: bool = False,
    bf16: bool | None = None,
) -> tuple[Any, Any]:
    """The base model from `model_dir` (plus the PEFT adapter in `adapter_dir`) and its tokenizer.

    In `inference_dtype(bf16, ...)` (training/device/precision.py: unset, bf16 on a CPU with bf16
    instructions, fp32 on other CPUs, the checkpoint's dtype on a GPU), as the chat server
    loads it; the adapter is loaded unmerged (its weights stay fp32), the way the chat
    server runs it, so replies match the chat.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.device.precision import inference_dtype

    cuda = torch.cuda.is_available()
    dtype = inference_dtype(bf16, cuda)
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if cuda:  # straight onto the GPU; on CPU no device_map (PEFT would dispatch it as offload)
        kwargs["device_map"] = {"": 0}
    if load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise GenerationError(
                "load_in_4bit needs bitsandbytes: pip install bitsandbytes "
                "(or unset TUNELOOP_LOAD_IN_4BIT)"
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda or dtype == "bfloat16" else torch.float32,
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except Exception as err:
        raise GenerationError(
            f"could not load the model from {model_dir} ({type(err).__name__}: {err})"
        ) from err
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(f"{model_dir} has no chat template: use an instruct/chat model")
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise GenerationError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json)")
        try:
            model = PeftModel.from_pretrained(
                model, str(adapter_dir), is_trainable=False, low_cpu_mem_usage=True
            )
        except Exception as err:
            raise GenerationError(
                f"could not load the adapter {adapter_dir} ({type(err).__name__}: {err})"
            ) from err
    model.eval()
    return model, tokenizer


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    batch_size: int | None = None,
    progress: bool = False,
    top_p: float = 1.0,
    on_batch: Callable[[list[int], list[str], float], None] | None = None,
    cut_off: set[int] | None = None,
) -> list[str]:
    """One reply per conversation (each ends with a user turn and has its system message).

    Batched and left-padded, greedy when `temperature` is 0. `on_batch(indices, replies,
    seconds)` is called after each batch with the positions (in `conversations`) it answered,
    so a caller can save results as they come and resume after an interruption. Positions
    whose reply ran out of `max_new_tokens` before the model ended it are added to
    `cut_off` when given (a caller that trains on replies must not take those as finished).
    """
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise GenerationError(f"temperature must be >= 0, got {temperature}")
    size = batch_size or default_batch_size(model)
    if size < 1:
        raise GenerationError(f"batch size must be at least 1, got {size}")
    prompts = [_encode(tokenizer, conv, i) for i, conv in enumerate(conversations)]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for i, ids in enumerate(prompts):
        if limit and len(ids) + max_new_tokens > limit:
            raise GenerationError(
                f"conversation {i + 1}: {len(ids)} prompt tokens + {max_new_tokens} new tokens "
                f"exceed the model's {limit}-token context; shorten it or lower max_new_tokens"
            )
    eos_ids = eos_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "disable_compile": True,
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
    else:  # override sampling defaults a generation_config.json may carry (and their warnings)
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    replies: list[str] = [""] * len(prompts)
    bar = _progress_bar(len(prompts), progress)
    try:
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            began = time.perf_counter()
            texts, ended = _generate_batch(
                model, tokenizer, [prompts[i] for i in batch], pad_id, kwargs
            )
            seconds = time.perf_counter() - began
            for i, text, done in zip(batch, texts, ended, strict=True):
                replies[i] = text
                if cut_off is not None and not done:
                    cut_off.add(i)
            if on_batch is not None:
                on_batch(list(batch), texts, seconds)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return replies


# A prompt prefix that every row of a batch shares (a deployment's system prompt: ~270 of a
# ~370-token prompt) is run through the model once, and its attention cache is copied to
# every row, when it is at least this many tokens; shorter ones are not worth the copy.
SHARED_PREFIX_MIN_TOKENS = 32


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares (each keeps at least one of its own)."""
    shortest = min(len(ids) for ids in prompts)
    n = 0
    while n < shortest - 1 and all(ids[n] == prompts[0][n] for ids in prompts):
        n += 1
    return n


def pack_rows(rows: list[list[int]], prefix: int, pad_id: int) -> tuple[Any, Any]:
    """Token rows as one batch (input ids, attention mask), laid out
    [prefix][padding][own tokens]: the first `prefix` tokens, which every row shares, stay in
    front, and each row's own tokens are right-aligned. The mask hides the padding, so with
    position ids that follow the mask each row sees exactly its own tokens."""
    import torch

    own = [ids[prefix:] for ids in rows]
    width = prefix + max(len(ids) for ids in own)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    input_ids[:, :prefix] = torch.tensor(rows[0][:prefix], dtype=torch.long)
    attention[:, :prefix] = 1
    for row, ids in enumerate(own):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def prefix_cache(model: Any, input_ids: Any, prefix: int, device: Any) -> Any:
    """The attention cache of the shared first `prefix` tokens of a `pack_rows` batch: run
    once, for one row, then repeated for every row. None when there is no shared prefix."""
    if not prefix:
        return None
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=input_ids[:1, :prefix].to(device), cache=cache, use_cache=True)
    cache.batch_repeat_interleave(input_ids.shape[0])
    return cache


def _generate_batch(
    model: Any, tokenizer: Any, prompts: list[list[int]], pad_id: int, kwargs: dict[str, Any]
) -> tuple[list[str], list[bool]]:
    """Pad `prompts` into one tensor (`pack_rows`), generate, and decode each row's new
    tokens; with, per row, whether the model ended it (an end token) rather than the token
    budget. A shared prefix is computed once (`prefix_cache`)."""
    import torch

    prefix = shared_prefix(prompts) if len(prompts) > 1 else 0
    if prefix < SHARED_PREFIX_MIN_TOKENS:
        prefix = 0
    input_ids, attention = pack_rows(prompts, prefix, pad_id)
    width = input_ids.shape[1]
    device = model.device
    with torch.inference_mode():
        cache = prefix_cache(model, input_ids, prefix, device)
        extra = {} if cache is None else {"cache": cache}
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs, **extra
        )
    eos = set(kwargs["eos_token_id"])
    texts, ended = [], []
    for row in out[:, width:].tolist():
        end = next((k for k, t in enumerate(row) if t in eos), None)
        ended.append(end is not None)
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts, ended


def _encode(tokenizer: Any, conversation: list[dict], index: int) -> list[int]:
    """Token ids of a conversation through the chat template, ready for the reply."""
    if not isinstance(conversation, list) or not conversation:
        raise GenerationError(f"conversation {index + 1}: expected a non-empty list of messages")
    for message in conversation:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise GenerationError(
                f"conversation {index + 1}: every message needs a role ({', '.join(ROLES)}) "
                "and string content"
            )
    if conversation[-1]["role"] != "user":
        raise GenerationError(f"conversation {index + 1}: must end with a user message")
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's eos and the generation config's."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    if not ids:
        raise GenerationError("the model defines no end-of-sequence token")
    return ids


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="reply", desc="generating", dynamic_ncols=True)
