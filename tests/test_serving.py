"""app/serving/engine.py on the tiny model: streaming, context trimming, and live adapter switching.

Greedy decoding makes every reply a pure function of (prompt, version), so "the reply was
produced by one version from first to last token" is checked by comparing texts with
single-version runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.serving.engine import CURRENT, ChatEngine, ReplyInfo, SamplingParams, ServingError
from training.registry import Registry

GREEDY = SamplingParams(max_new_tokens=40, temperature=0.0)
LONG = SamplingParams(max_new_tokens=120, temperature=0.0)
MEDIUM = SamplingParams(max_new_tokens=60, temperature=0.0)
ASK = [{"role": "user", "content": "How do I water tomatoes?"}]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def registry(tmp_path: Path, tiny_adapters: dict[str, Path]) -> Registry:
    """A registry holding v1 and v2; CURRENT unset (bare base)."""
    reg = Registry(tmp_path / "adapters")
    for version, path in tiny_adapters.items():
        reg.register(version, path)
    return reg


@pytest.fixture
def make_engine(tiny_model_dir: Path, registry: Registry) -> Iterator[Callable[..., ChatEngine]]:
    engines: list[ChatEngine] = []

    def make(**kwargs: Any) -> ChatEngine:
        kwargs.setdefault("context_tokens", 512)
        kwargs.setdefault("bf16", False)  # exact replies: see tests/conftest.py
        engine = ChatEngine(tiny_model_dir, registry, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(scope="module")
def reference(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., str]]:
    """Greedy text of one prompt on one version, from a separate engine (cached)."""
    registry = Registry(tmp_path_factory.mktemp("reference") / "adapters")
    for version, path in tiny_adapters.items():
        registry.register(version, path)
    # One plain `model.generate` per reply: the reference the batched engine must match.
    engine = ChatEngine(tiny_model_dir, registry, context_tokens=512, max_batch=0, bf16=False)
    cache: dict[tuple[str, str | None, int], str] = {}

    def text(history: list[dict[str, str]], version: str | None, params: SamplingParams) -> str:
        key = (repr(history), version, params.max_new_tokens)
        if key not in cache:
            cache[key] = engine.generate(history, params, adapter=version).text
        return cache[key]

    yield text
    engine.close()


@contextmanager
def forward_hook(
    engine: ChatEngine, hook: Callable[[], None], *, before_lock: bool
) -> Iterator[None]:
    """Run `hook` on each forward step of reply threads, before or after the step lock."""

    def pre(module: Any, args: Any) -> None:
        if threading.current_thread().name.startswith("tuneloop-reply"):
            hook()

    handle = engine.model.register_forward_pre_hook(pre, prepend=before_lock)
    try:
        yield
    finally:
        handle.remove()


def plain_transformers_reply(model_dir: Path, prompt: list[dict], adapter: Path | None) -> str:
    """The same greedy reply computed without our engine, straight from transformers/peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    inputs: Any = tok.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    return str(tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


# -- replies ---------------------------------------------------------------------------------
def test_bare_base_reply_and_its_info(make_engine, tiny_model_dir: Path) -> None:
    engine = make_engine(system_prompt="Be brief.")
    assert engine.serving_version() is None and engine.model_name == "model"
    info = engine.generate(ASK, GREEDY)
    prompt = [{"role": "system", "content": "Be brief."}, *ASK]
    assert info.text == plain_transformers_reply(tiny_model_dir, prompt, None)
    assert info.adapter_version is None and info.model_name == "model"
    assert info.prompt == prompt
    assert info.params == {"max_new_tokens": 40, "temperature": 0.0, "top_p": 0.9}
    assert info.new_tokens == 40 and info.finish_reason == "length"  # the tiny model rambles
    assert info.ttft_ms is not None and 0 < info.ttft_ms <= info.latency_ms


def test_the_current_adapter_changes_the_reply(
    make_engine, registry: Registry, tiny_model_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    engine = make_engine(system_prompt="Be brief.", model_name="tiny")
    base = engine.generate(ASK, GREEDY)
    registry.set_current("v1")
    assert engine.refresh() is True and engine.serving_version() == "v1"
    info = engine.generate(ASK, GREEDY)
    assert info.adapter_version == "v1" and info.model_name == "tiny"
    assert info.text != base.text
    assert info.text == plain_transformers_reply(tiny_model_dir, info.prompt, tiny_adapters["v1"])
    # the bare base is still there for comparisons, and unchanged by the loaded adapter
    assert engine.generate(ASK, GREEDY, adapter=None).text == base.text


def test_stream_yields_deltas_that_add_up(make_engine) -> None:
    reply = make_engine().stream(ASK, LONG)
    assert reply.info is None and reply.adapter_version is None
    pieces = list(reply)
    assert len(pieces) >= 3 and all(pieces)
    assert reply.info is not None
    assert "".join(pieces) == reply.text == reply.info.text
    assert list(reply) == []  # a reply streams once


def test_sampling_gives_varied_replies(make_engine) -> None:
    engine = make_engine()
    hot = SamplingParams(max_new_tokens=30, temperature=1.5, top_p=1.0)
    texts = {engine.generate(ASK, hot).text for _ in range(3)}
    assert len(texts) > 1


def test_sampling_params_are_checked_and_storable() -> None:
    assert SamplingParams().as_dict() == {"max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9}
    assert SamplingParams(temperature=0).greedy
    bad_params: list[dict[str, Any]] = [
        {"max_new_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
    ]
    for bad in bad_params:
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_cancel_stops_generation_and_frees_the_engine(make_engine, registry: Registry) -> None:
    registry.set_current("v1")
    engine = make_engine(max_adapters=1)
    reply = engine.stream(ASK, SamplingParams(max_new_tokens=400, temperature=0.0))
    for i, _ in enumerate(reply):
        if i == 2:
            break
    info = reply.info
    assert info is not None and info.finish_reason == "cancelled"
    assert info.adapter_version == "v1" and info.text == reply.text
    assert reply.done.wait(timeout=10)  # the engine notices within a step
    assert engine.generate(ASK, GREEDY).adapter_version == "v1"


def test_a_failing_step_is_a_serving_error_and_the_engine_recovers(make_engine) -> None:
    engine = make_engine()
    calls = []

    def fail_once() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")

    with forward_hook(engine, fail_once, before_lock=False):  # fails while holding the lock
        reply = engine.stream(ASK, GREEDY)
        with pytest.raises(ServingError, match="generation failed.*out of memory"):
            for _ in reply:
                pass
    assert engine.generate(ASK, GREEDY).new_tokens == GREEDY.max_new_tokens


def test_load_in_4bit_without_bitsandbytes_is_a_clear_error(
    tiny_model_dir: Path, registry: Registry
) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ServingError, match="pip install bitsandbytes"):
        ChatEngine(tiny_model_dir, registry, load_in_4bit=True)


# -- prompts and context -----------------------------------------------------------------
def conversation(turns: int) -> list[dict[str, str]]:
    history = []
    for i in range(turns):
        history.append({"role": "user", "content": f"Question {i}: how long should bread rest?"})
        history.append({"role": "assistant", "content": f"Answer {i}: until it has doubled."})
    history.append({"role": "user", "content": "And what about the soup?"})
    return history


def test_context_keeps_system_and_newest_whole_turns(make_engine) -> None:
    engine = make_engine(system_prompt="Be brief.", context_tokens=256)
    history = conversation(30)
    prompt = engine.build_prompt(history, max_new_tokens=64)
    assert prompt[0] == {"role": "system", "content": "Be brief."}
    kept = prompt[1:]
    assert kept == history[-len(kept) :] and kept[0]["role"] == "user"
    assert 3 <= len(kept) < len(history)
    assert engine.count_tokens(prompt) <= 256 - 64
    one_more = [prompt[0], *history[-len(kept) - 2 :]]  # the next older whole turn
    assert engine.count_tokens(one_more) > 256 - 64
    # nothing to trim: everything is kept
    assert engine.build_prompt(conversation(1), 64)[1:] == conversation(1)
    info = engine.generate(history, SamplingParams(max_new_tokens=64, temperature=0))
    assert info.prompt == prompt


def test_a_system_message_in_history_replaces_the_default(make_engine) -> None:
    engine = make_engine(system_prompt="Be brief.")
    history = [{"role": "system", "content": "Talk like a pirate."}, *ASK]
    assert engine.build_prompt(history, 64) == history
    assert make_engine().build_prompt(ASK, 64) == ASK  # no system prompt configured


def test_too_long_message_is_a_serving_error(make_engine) -> None:
    engine = make_engine(context_tokens=128)
    with pytest.raises(ServingError, match="too long.*only 64 fit"):
        engine.stream(ask("tomato " * 200), SamplingParams(max_new_tokens=64))
    with pytest.raises(ServingError, match="leaves no room"):
        engine.stream(ASK, SamplingParams(max_new_tokens=128))


def test_bad_histories_are_serving_errors(make_engine) -> None:
    engine = make_engine()
    for history, message in [
        ([], "empty"),
        ([{"role": "assistant", "content": "hi"}], "end with a user message"),
        ([{"role": "robot", "content": "hi"}], "Unknown message role"),
        ([{"role": "user", "content": None}], "text content"),
    ]:
        with pytest.raises(ServingError, match=message):
            engine.stream(history, GREEDY)


# -- versions and the live switch --------------------------------------------------------
def test_refresh_is_a_noop_when_current_is_unchanged(make_engine, registry: Registry) -> None:
    engine = make_engine()
    assert engine.refresh() is False and engine.adapters.loaded() == []
    registry.set_current("v1")
    assert engine.refresh() is True
    assert engine.refresh() is False and engine.refresh() is False
    assert engine.serving_version() == "v1" and engine.adapters.loaded() == ["v1"]
    registry.set_current(None)
    assert engine.refresh() is True and engine.serving_version() is None


def test_switch_mid_stream_keeps_the_running_reply_on_its_version(
    make_engine, registry: Registry, reference
) -> None:
    v1_text, v2_text = reference(ASK, "v1", LONG), reference(ASK, "v2", LONG)
    assert v1_text != v2_text
    registry.set_current("v1")
    engine = make_engine()
    assert engine.adapters.loaded() == ["v1"]
    paused, resume, steps = threading.Event(), threading.Event(), []

    def pause_at_step_20() -> None:
        steps.append(1)
        if len(steps) == 20:
            paused.set()
            assert resume.wait(10)

    with forward_hook(engine, pause_at_step_20, before_lock=True):
        reply = engine.stream(ASK, LONG)
        pieces = iter(reply)
        first = next(pieces)
        assert paused.wait(10)
        registry.set_current("v2")
        assert engine.refresh() is True  # loads v2 while the v1 reply is mid-stream
        assert engine.serving_version() == "v2" and engine.adapters.loaded() == ["v1", "v2"]
        resume.set()
        text = first + "".join(pieces)
    assert reply.info is not None
    assert text == reply.info.text == v1_text
    assert reply.adapter_version == reply.info.adapter_version == "v1"
    after = engine.generate(ASK, LONG)
    assert after.adapter_version == "v2" and after.text == v2_text


def test_background_poller_switches_without_restart(
    make_engine, registry: Registry, reference
) -> None:
    v1_text, v2_text = reference(ASK, "v1", LONG), reference(ASK, "v2", LONG)
    registry.set_current("v1")
    engine = make_engine(poll_seconds=0.05)
    engine.start()
    switched_at: list[int] = []

    def slow_step() -> None:
        time.sleep(0.005)

    with forward_hook(engine, slow_step, before_lock=True):
        reply = engine.stream(ASK, LONG)
        for n, _ in enumerate(reply):
            if n == 1:
                registry.set_current("v2")
            if engine.serving_version() == "v2" and not switched_at:
                switched_at.append(n)
    assert switched_at, "the switch must land while the reply is still streaming"
    assert reply.info is not None and reply.info.adapter_version == "v1"
    assert reply.info.text == v1_text
    after = engine.generate(ASK, LONG)
    assert (after.adapter_version, after.text) == ("v2", v2_text)


@pytest.mark.parametrize("max_batch", [8, 0], ids=["batched", "one-loop-per-reply"])
def test_concurrent_replies_on_different_versions(
    make_engine, registry: Registry, reference, max_batch: int
) -> None:
    """Greedy replies of three versions (v1, v2, bare base) decoded at the same time equal
    the same requests answered alone by plain `model.generate`."""
    registry.set_current("v1")
    engine = make_engine(max_batch=max_batch)
    jobs = [
        (ask(q), adapter)
        for q, adapter in zip(
            ["How do I water tomatoes?", "Bread?", "hello", "What is the capital of France?"] * 2,
            [CURRENT, "v2", None, "v1", "v2", CURRENT, "v1", None],
            strict=True,
        )
    ]
    expected = [reference(h, "v1" if a == CURRENT else a, MEDIUM) for h, a in jobs]
    order: list[str] = []
    results: list[ReplyInfo | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        history, adapter = jobs[i]
        start.wait()
        results[i] = engine.generate(history, MEDIUM, adapter=adapter)

    with forward_hook(
        engine, lambda: order.append(threading.current_thread().name), before_lock=False
    ):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    for (_, adapter), info, text in zip(jobs, results, expected, strict=True):
        assert info is not None
        assert info.adapter_version == ("v1" if adapter == CURRENT else adapter)
        assert info.text == text
    if max_batch:  # one forward step decoded several versions' rows at once
        assert engine._batcher is not None and engine._batcher.max_rows_seen >= 4
        assert len(order) < sum(i.new_tokens for i in results if i) / 2
    else:
        switches = sum(a != b for a, b in zip(order, order[1:], strict=False))
        assert switches > 30, "the replies' steps should interleave"


def test_a_corrupted_adapter_is_refused_and_the_old_one_keeps_serving(
    make_engine, registry: Registry, reference, caplog: pytest.LogCaptureFixture
) -> None:
    registry.set_current("v1")
    engine = make_engine()
    registry.set_current("v2")  # verified fine, then damaged before the server picks it up
    weights = registry.path("v2") / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="app.serving.engine"):
        assert engine.refresh() is False
        assert engine.refresh() is False  # logged once, not at every poll
    assert [r.getMessage() for r in caplog.records if "v2" in r.getMessage()][0].startswith(
        "CURRENT names 'v2' but it cannot be served; still serving v1"
    )
    # once, not at every poll (INFO lines of the adapters loading before are not counted)
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert engine.serving_version() == "v1" and engine.adapters.loaded() == ["v1"]
    assert engine.generate(ASK, LONG).text == reference(ASK, "v1", LONG)
    with pytest.raises(ServingError, match="'v2' refused.*corrupted"):
        engine.stream(ASK, GREEDY, adapter="v2")
    with pytest.raises(ServingError, match="not registered"):
        engine.stream(ASK, GREEDY, adapter="v9")


@pytest.mark.parametrize("damage", ["wrong shape", "missing weights"])
def test_an_adapter_that_does_not_fit_the_model_is_refused(
    make_engine,
    registry: Registry,
    reference,
    tmp_path: Path,
    tiny_adapters: dict[str, Path],
    damage: str,
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    # broken before registering, so the checksums are fine and only loading can tell
    broken = shutil.copytree(tiny_adapters["v1"], tmp_path / "broken")
    tensors = load_file(broken / "adapter_model.safetensors")
    name = next(k for k in tensors if "lora_A" in k)
    if damage == "wrong shape":
        tensors[name] = tensors[name][:, :-1].contiguous()
    else:
        del tensors[name]
    save_file(tensors, broken / "adapter_model.safetensors")
    registry.register("bad", broken)
    engine = make_engine()
    base_text = reference(ASK, None, LONG)
    for _ in range(2):  # first as the first adapter ever, then beside a loaded one
        registry.set_current("bad")
        assert engine.refresh() is False
        with pytest.raises(ServingError, match="'bad' failed to load"):
            engine.stream(ASK, GREEDY, adapter="bad")
        assert engine.generate(ASK, LONG, adapter=None).text == base_text
        registry.set_current("v1")
        engine.refresh()
        assert engine.serving_version() == "v1"
        assert engine.generate(ASK, LONG).text == reference(ASK, "v1", LONG)
        assert engine.adapters.loaded() == ["v1"]


def test_idle_adapters_are_unloaded_beyond_the_bound(
    make_engine, registry: Registry, reference
) -> None:
    engine = make_engine(max_adapters=1)
    assert engine.generate(ASK, GREEDY, adapter="v1").text == reference(ASK, "v1", GREEDY)
    assert engine.adapters.loaded() == ["v1"]
    assert engine.generate(ASK, GREEDY, adapter="v2").text == reference(ASK, "v2", GREEDY)
    assert engine.adapters.loaded() == ["v2"]
    # a reply in flight keeps its adapter loaded, the serving one is never unloaded
    registry.set_current("v1")
    engine.refresh()
    slow = engine.stream(ASK, LONG, adapter="v2")
    assert sorted(engine.adapters.loaded()) == ["v1", "v2"]
    assert "".join(slow) == reference(ASK, "v2", LONG)
    assert engine.adapters.loaded() == ["v1"]
    assert engine.generate(ASK, GREEDY, adapter="v1").text == reference(ASK, "v1", GREEDY)


def test_serving_sets_its_cpu_defaults_only_where_unset() -> None:
    from app.serving.cpu_env import SERVING_THREAD_ENV, tune_cpu_threads

    environ: dict[str, str] = {}
    assert tune_cpu_threads(environ) == SERVING_THREAD_ENV
    assert environ == SERVING_THREAD_ENV
    # the operator's own choice wins
    mine = {"GOMP_SPINCOUNT": "300000", "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1"}
    assert tune_cpu_threads(mine) == {}
    assert mine == {"GOMP_SPINCOUNT": "300000", "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1"}


def test_rounds_the_server_starts_do_not_inherit_the_serving_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    import app.serving.cpu_env
    from app.serving.cpu_env import SERVING_THREAD_ENV, tune_cpu_threads, untuned_environ

    environ = {k: v for k, v in os.environ.items() if k not in SERVING_THREAD_ENV}
    environ["TUNELOOP_SOMETHING"] = "kept"
    monkeypatch.setattr(os, "environ", environ)  # this process's environment, restored after
    monkeypatch.setattr(app.serving.cpu_env, "_TUNED", {})
    assert tune_cpu_threads() == SERVING_THREAD_ENV
    assert all(os.environ[k] == v for k, v in SERVING_THREAD_ENV.items())
    child = untuned_environ()
    assert child["TUNELOOP_SOMETHING"] == "kept"
    assert not set(SERVING_THREAD_ENV) & set(child)


def test_nothing_serve_imports_before_the_tuning_loads_torch() -> None:
    """libgomp reads GOMP_SPINCOUNT once, when torch loads it: `tuneloop serve` tunes first,
    so none of the modules it imports must pull torch in at import time."""
    import subprocess
    import sys

    code = (
        "import sys, app.cli.main, app.serving.engine, app.serving.chat, app.serving.modelfiles, "
        "app.web.ui, training.registry, app.cli.argilla; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_system_prompt_is_computed_once_per_adapter_and_reused(make_engine) -> None:
    """The batched engine runs a shared system message once per adapter and reuses its
    keys/values; replies stay those of plain `model.generate` over the whole prompt."""
    system = "You help with gardens, kitchens and bicycles. Be short, polite and correct. " * 3
    batched = make_engine(system_prompt=system)
    plain = make_engine(system_prompt=system, max_batch=0)
    for adapter in (None, "v1"):
        for question in ("How do I water tomatoes?", "Bread?", "hello"):
            history = ask(question)
            assert (
                batched.generate(history, GREEDY, adapter=adapter).text
                == plain.generate(history, GREEDY, adapter=adapter).text
            )
    assert batched._batcher is not None and len(batched._batcher._prefixes) == 2
