"""Choosing a reply's next token from the model's scores, as the batch decoder does for each
row: greedy, or temperature and top-p with the row's own seeded generator."""

from __future__ import annotations

from typing import Any

from app.serving.replies import SamplingParams


def torch_seed(seed: int) -> int:
    """A seed torch takes: the API allows any signed 64-bit seed; torch wants unsigned."""
    return seed % 2**64


def sample_token(logits: Any, params: SamplingParams, generator: Any = None) -> int:
    """The next token: greedy, or temperature + top-p drawn with `generator`."""
    import torch

    if params.greedy:
        return int(logits.argmax())
    scores = logits.float() / params.temperature
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest set whose mass reaches top_p (always the top token)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= params.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
