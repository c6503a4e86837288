"""CPU environment for serving: OpenMP and Gradio settings applied before either loads.

`tuneloop serve` calls `tune_cpu_threads()` first thing; the training rounds it starts get
`untuned_environ()`, since the serving setting was not measured for training. The threads
that run the model (serve's decoding, a round) lower their own CPU priority
(`lower_thread_priority`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

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
# Where this process started: lowering is relative to it, so a command called twice in one
# process (tests, an embedding program) does not sink a step further each time.
_START_NICE = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0


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


def lower_thread_priority(steps: int) -> int:
    """Run the calling thread `steps` nice levels below where the process started (Linux
    nice is per thread; threads it starts later, such as OpenMP's workers, inherit it).

    For the threads that run the model: with idle CPU nothing changes, and when the CPU is
    short, the store's work (clicks, imports, syncs) goes first. Returns the thread's nice
    value; 0 steps, no support, or no permission change nothing."""
    if steps <= 0 or not hasattr(os, "setpriority"):
        return 0
    tid = threading.get_native_id()
    try:
        target = min(19, _START_NICE + steps)
        if target > os.getpriority(os.PRIO_PROCESS, tid):
            os.setpriority(os.PRIO_PROCESS, tid, target)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as err:  # a container may refuse; the server works the same without
        name = threading.current_thread().name
        log.warning("could not lower the CPU priority of %s: %s", name, err)
        return 0
