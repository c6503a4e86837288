"""Training rows that share a prompt prefix compute it once per batch.

A deployment's rows start with the same system prompt (~270 of a ~370-token row), and a
DPO pair repeats its whole prompt for the chosen and the rejected reply. The transformer
body then spends most of a step on tokens every row of the batch has in common.

`share_prefix(model)` wraps the decoder body (the module that turns token ids into hidden
states, under the LM head) so that, when every row of a batch starts with the same tokens,
those tokens run once, at batch size 1, and their attention cache is repeated for every
row; the rows' own tokens then run on top of it, and the prefix's hidden states are
repeated in front of theirs. Gradients flow through the repeated cache back into the
prefix, so the loss and the gradients are those of the plain forward (up to float
rounding): each row still attends to its whole sequence at the same positions. LoRA's
dropout then draws one mask for the shared tokens instead of one per row.

It steps aside (the plain forward runs) whenever the call is not a plain full-sequence
forward: one row, a cache or positions passed in, embeddings instead of ids, hidden states
or attentions asked for, padding inside the prefix, gradient checkpointing (which does not
keep a cache), or a shared prefix shorter than `min_tokens`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from training.eval.generate import SHARED_PREFIX_MIN_TOKENS

log = logging.getLogger(__name__)

# Below this, repeating the cache costs about what it saves: the threshold generation's
# same trick was measured with (training/eval/generate.py).
MIN_TOKENS = SHARED_PREFIX_MIN_TOKENS
_PLAIN_ONLY = ("position_ids", "inputs_embeds", "cache", "past_key_values", "cache_position")
_ASKS_MORE = ("output_hidden_states", "output_attentions", "output_router_logits")


def shared_length(input_ids: Any, attention_mask: Any) -> int:
    """How many leading tokens every row has in common and attends to (each row keeps at
    least one token of its own)."""
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(dim=0)
    differs = (~same).nonzero()
    n = int(differs[0, 0]) if len(differs) else int(input_ids.shape[1])
    return min(n, int(input_ids.shape[1]) - 1)


def decoder_body(model: Any) -> Any:
    """The module under the LM head (`LlamaModel` for a `LlamaForCausalLM`), PEFT or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", None)
    return body if body is not None and body is not inner else None


def share_prefix(model: Any, min_tokens: int = MIN_TOKENS) -> bool:
    """Make `model`'s decoder body compute a batch's shared prefix once (see the module
    docstring). Returns False, changing nothing, for a model whose body takes no cache."""
    body = decoder_body(model)
    if body is None or getattr(body, "_tuneloop_shared_prefix", False):
        return body is not None
    original = body.forward
    params = inspect.signature(original).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    if cache_arg not in params or "attention_mask" not in params:
        return False

    def forward(*args: Any, **kwargs: Any) -> Any:
        input_ids = kwargs.get("input_ids")
        if (
            args
            or input_ids is None
            or input_ids.dim() != 2
            or input_ids.shape[0] < 2
            or any(kwargs.get(k) is not None for k in _PLAIN_ONLY)
            or any(kwargs.get(k) for k in _ASKS_MORE)
            or (body.training and getattr(body, "gradient_checkpointing", False))
        ):
            return original(*args, **kwargs)
        mask = kwargs.get("attention_mask")
        n = shared_length(input_ids, mask)
        if n < min_tokens:
            return original(*args, **kwargs)
        if not body._tuneloop_shared_prefix_seen:  # once per model: the operator can see it
            body._tuneloop_shared_prefix_seen = True
            log.info(
                "training batches start with the same %d tokens: they run once per batch "
                "(TUNELOOP_SHARE_PREFIX=false runs every row whole)",
                n,
            )
        return _forward_shared(body, original, cache_arg, n, kwargs)

    body.forward = forward
    body._tuneloop_shared_prefix = True
    body._tuneloop_shared_prefix_seen = False
    return True


def _forward_shared(body: Any, original: Any, cache_arg: str, n: int, kwargs: dict) -> Any:
    """The body's output for the whole batch, with its first `n` tokens run once."""
    import torch
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    input_ids, mask = kwargs.pop("input_ids"), kwargs.pop("attention_mask", None)
    for name in (*_PLAIN_ONLY, "use_cache"):  # all None here (see share_prefix)
        kwargs.pop(name, None)
    rows = input_ids.shape[0]
    cache = DynamicCache(config=body.config)
    head = original(
        input_ids=input_ids[:1, :n],
        attention_mask=None if mask is None else mask[:1, :n],
        use_cache=True,
        **{cache_arg: cache},
        **kwargs,
    )
    cache.batch_repeat_interleave(rows)  # differentiable: gradients sum back into the prefix
    tail = original(
        input_ids=input_ids[:, n:],
        attention_mask=mask,
        use_cache=True,
        **{cache_arg: cache},
        **kwargs,
    )
    hidden = torch.cat([head.last_hidden_state.expand(rows, -1, -1), tail.last_hidden_state], dim=1)
    return BaseModelOutputWithPast(last_hidden_state=hidden)
