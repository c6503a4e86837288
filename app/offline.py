"""Offline and silent: every process tuneloop runs keeps the Hugging Face hub, telemetry and
analytics switched off.

tuneloop serves local models to people who chose self-hosting; nothing it runs may download
weights or report usage. The libraries it builds on do both by default: the hub client
fetches what a name points to, TRL (>= 1.5) sends a usage ping from every trainer it starts
unless HF_HUB_DISABLE_TELEMETRY is set, and Gradio reports analytics. They read these
variables when they are first imported, so the CLI sets them before anything imports them;
child processes (`watch` rounds, the Operator tab's rounds, torchrun workers) inherit them.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


def go_offline(environ: MutableMapping[str, str] | None = None) -> None:
    """Set OFFLINE_ENV in `environ` (this process's environment unless given), overriding
    what was there: a self-hosted tool has no setting that calls home."""
    (os.environ if environ is None else environ).update(OFFLINE_ENV)
