"""The batch admits people's turns before a front end's helper calls when it is full."""

from __future__ import annotations

import threading
from pathlib import Path

from app.serving.engine import ChatEngine, SamplingParams
from app.serving.frontends import helper_params
from training.registry import Registry


def test_a_waiting_person_goes_before_a_waiting_helper_call(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    engine = ChatEngine(
        tiny_model_dir,
        Registry(tmp_path / "adapters"),
        context_tokens=512,
        max_batch=1,
        bf16=False,
    )
    try:
        person = SamplingParams(max_new_tokens=4, temperature=0)
        long = engine.stream([{"role": "user", "content": "a long one"}], SamplingParams(400, 0))
        pieces = iter(long)
        next(pieces)  # it holds the batch's one row now
        # Both wait for that row: the helper call asked first, the person second.
        queued = {
            "helper": engine.stream(
                [{"role": "user", "content": "tags"}], helper_params(person, 4, json=False)
            ),
            "person": engine.stream([{"role": "user", "content": "hello"}], person),
        }
        finished: list[str] = []
        lock = threading.Lock()

        def drain(name: str) -> None:
            for _ in queued[name]:
                pass
            with lock:
                finished.append(name)

        threads = [threading.Thread(target=drain, args=(name,)) for name in queued]
        for t in threads:
            t.start()
        long.cancel()
        for _ in pieces:
            pass
        for t in threads:
            t.join(timeout=60)
        assert finished == ["person", "helper"]
    finally:
        engine.close()
