"""CPU environment for serving: OpenMP and Gradio settings applied before either loads.

`tuneloop serve` calls `tune_cpu_threads()` first thing; the training rounds it starts get
`untuned_environ()`, since the serving setting was not measured for training.
"""

from __future__ import annotations

import os
from typing import Any

# How long an idle OpenMP worker of torch's CPU kernels busy-waits for the next parallel
# region before it sleeps. libgomp's default (300,000 spins, milliseconds) keeps the
# workers spinning through every gap of a generation step; on the 2-core reference machine
# that spinning was ~40% of the CPU a reply took (SmolLM2: 117 -> 68 CPU-ms per token at
# the same tokens/s), CPU the web server, the store and the other chats needed. Set before
# torch loads, and only where the operator has not set it.
#
# Gradio's queue keeps analytics of the last 10,000 events and, by default, rebuilds their
# summary (a pandas DataFrame, grouped, percentiles) after every single event: CPU per click
# that grows with the server's uptime, up to tens of milliseconds. Under 8 experts clicking
# during an import it was ~14% of serve's busy CPU after only a thousand events. Once every
# 1,000 events keeps the summary and frees that CPU for the store and the other chats.
SERVING_THREAD_ENV = {"GOMP_SPINCOUNT": "2000", "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000"}
_TUNED: dict[str, str] = {}  # what tune_cpu_threads set in os.environ


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
