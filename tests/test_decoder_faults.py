"""One bad row never stops the decoder: the batched engine and the one-loop path on the tiny model.

The known case is a seed beyond what torch takes (`torch.Generator().manual_seed(2**64)`
raises "Overflow when unpacking long long"); it once killed the shared decoding thread, so
every other stream stopped. Here that row fails alone, and a fault that escapes the loop
itself is survived too (the loop is restarted, the restart counted and shown).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.serving.engine import ChatEngine, SamplingParams, ServingError
from training.registry import Registry

ASK = [{"role": "user", "content": "How do I water tomatoes?"}]
LONG = SamplingParams(max_new_tokens=120, temperature=0.0)


@pytest.fixture
def make_engine(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ChatEngine]]:
    engines: list[ChatEngine] = []

    def make(**kwargs: Any) -> ChatEngine:
        kwargs.setdefault("context_tokens", 512)
        kwargs.setdefault("bf16", False)
        engine = ChatEngine(tiny_model_dir, Registry(tmp_path / "adapters"), **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def drain(reply: Any) -> str:
    for _ in reply:
        pass
    return str(reply.text)


@pytest.mark.parametrize("max_batch", [8, 0], ids=["batched", "one-loop"])
def test_a_seed_torch_refuses_fails_its_row_alone(
    make_engine, max_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The seed as it once reached torch, unmapped: the known fault, kept as the probe of the
    # containment (the API now refuses such seeds and the engine maps every signed 64-bit one).
    monkeypatch.setattr("app.serving.batching.torch_seed", lambda seed: seed)
    monkeypatch.setattr("app.serving.engine.torch_seed", lambda seed: seed)
    engine = make_engine(max_batch=max_batch)
    expected = engine.generate(ASK, LONG).text
    other = engine.stream(ASK, LONG)  # in flight when the bad row arrives
    pieces = iter(other)
    first = next(pieces)
    bad = engine.stream(ASK, SamplingParams(max_new_tokens=8, temperature=0.7, seed=2**64))
    with pytest.raises(ServingError, match="Overflow"):
        drain(bad)
    rest = "".join(pieces)  # the other stream goes on to its end
    assert first + rest == expected and other.info is not None
    assert other.info.finish_reason in ("stop", "length")
    assert engine.generate(ASK, LONG).text == expected  # and the engine still serves


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63 - 1, 2**64])
def test_every_signed_64_bit_seed_samples(make_engine, seed: int) -> None:
    engine = make_engine()
    params = SamplingParams(max_new_tokens=6, temperature=0.9, seed=seed)
    assert engine.generate(ASK, params).text == engine.generate(ASK, params).text


@pytest.mark.parametrize("temperature", [1.1754943508222875e-38, 1e-9])
def test_a_vanishing_temperature_answers_as_greedy(make_engine, temperature: float) -> None:
    # found by the API fuzz test: scores divided by 1e-38 overflowed to NaN probabilities
    engine = make_engine()
    tiny = engine.generate(ASK, SamplingParams(max_new_tokens=6, temperature=temperature))
    assert tiny.text == engine.generate(ASK, SamplingParams(max_new_tokens=6, temperature=0)).text


def test_a_fault_outside_any_row_restarts_the_loop_and_is_counted(make_engine) -> None:
    engine = make_engine()
    batcher = engine._batcher
    assert batcher is not None
    real = batcher._settle
    armed = threading.Event()

    def settle_once_broken(rows: list[Any], state: dict[str, Any]) -> list[Any]:
        if armed.is_set() and rows:
            armed.clear()
            raise RuntimeError("bookkeeping broke")
        return real(rows, state)

    expected = engine.generate(ASK, LONG).text
    batcher._settle = settle_once_broken  # type: ignore[method-assign]
    armed.set()
    victim = engine.stream(ASK, LONG)
    with pytest.raises(ServingError, match="bookkeeping broke"):
        drain(victim)
    assert engine.generate(ASK, LONG).text == expected  # the loop came back
    health = engine.health()
    assert health["decoder_restarts"] == 1
    assert "bookkeeping broke" in health["decoder_last_error"]
