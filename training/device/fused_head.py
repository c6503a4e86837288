"""TRL's fused LM head on a CPU: score only the positions that have a label.

TRL's trainers project the final hidden states through the LM head in tiles, without
building the whole (batch, length, vocabulary) logits. On Triton devices they project only
the positions whose next token is trained on; everywhere else they project every position
(a device that compiles per tile shape would recompile for each batch otherwise) and zero
the rest. A CPU compiles nothing, and a round's rows are mostly prompt: on ~400-token rows
with ~120-token replies, scoring every position made TRL's head most of an SFT step
(bench.shared_prefix's rows through `train_sft`: 3.1 s a step, 1.8 s with labels only).
The projection of each labelled position is the same either way, so the loss and its
gradients are too (tests/test_fused_head.py).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)
_MARK = "_tuneloop_labels_only"


def score_only_labels() -> bool:
    """Make TRL's fused LM head project only labelled positions on a CPU as well. Returns
    whether it does now; False (with a warning) where this TRL has no such switch."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - TRL is a dependency
        return False
    original: Any = getattr(trl_utils, "_use_triton", None)
    if original is None:
        logger.warning("TRL's fused LM head has changed: every position is scored on the CPU")
        return False
    if getattr(original, _MARK, False):
        return True

    def labels_only(device: Any) -> bool:
        # read by the head only to choose whether to project labelled positions alone; the
        # kernel itself asks its own module whether Triton runs, so a CPU keeps torch's path
        return bool(original(device)) or device.type == "cpu"

    setattr(labels_only, _MARK, True)
    trl_utils._use_triton = labels_only
    return True
