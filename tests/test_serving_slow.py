"""The real embedded SmolLM2: GGUF conversion, cache, chat, and the cost of the step hooks.

Minutes on CPU (two GGUF loads of ~30-40 s each); run with `pytest -m slow`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.modelfiles import EMBEDDED_MODEL_NAME, embedded_gguf, resolve_model_dir
from app.serving import ChatEngine, SamplingParams
from training.registry import Registry

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded GGUF converted into a fresh models dir (timed: the first start)."""
    models = tmp_path_factory.mktemp("models")
    start = time.monotonic()
    path = resolve_model_dir(None, models, progress=True)
    print(f"\nfirst conversion took {time.monotonic() - start:.0f} s")
    return path


@pytest.fixture(scope="module")
def registry(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Two random LoRA adapters (r=16, all linear layers) for the real model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("real-adapters")
    reg = Registry(root / "registry")
    for seed in (1, 2):
        base = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(
                base,
                LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False),
            )
        # scale B down so the adapter nudges the model rather than wrecking it
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(0.05)
        model.save_pretrained(str(root / f"v{seed}"))
        reg.register(f"v{seed}", root / f"v{seed}")
    yield reg


def test_conversion_is_cached_and_matches_the_gguf(converted: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert converted.name == EMBEDDED_MODEL_NAME
    assert (converted / "model.safetensors").is_file()
    start = time.monotonic()
    assert resolve_model_dir(None, converted.parent, progress=False) == converted
    assert time.monotonic() - start < 1.0  # reused, not converted again

    tok = AutoTokenizer.from_pretrained(converted)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    start = time.monotonic()
    cached = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    load_s = time.monotonic() - start
    assert getattr(cached.config, "quantization_config", None) is None
    gguf = embedded_gguf()
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    inputs: Any = tok.apply_chat_template(
        ASK, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        a = cached(**inputs).logits
        b = direct(**inputs).logits
    assert torch.equal(a, b), f"max |diff| {(a - b).abs().max().item()}"
    print(f"\ncached model loads in {load_s:.1f} s")


def test_the_converted_model_answers_a_chat_message(converted: Path, registry: Registry) -> None:
    with ChatEngine(converted, registry, system_prompt="Be brief.") as engine:
        assert engine.model_name == EMBEDDED_MODEL_NAME
        info = engine.generate(ASK, SamplingParams(max_new_tokens=24, temperature=0))
    assert info.text.strip() and info.new_tokens > 0
    assert "<|im_end|>" not in info.text
    print(f"\nSmolLM2: {info.text!r}")


def test_hot_switch_on_the_real_model(converted: Path, registry: Registry) -> None:
    params = SamplingParams(max_new_tokens=48, temperature=0)
    with ChatEngine(converted, registry) as engine:
        alone = {v: engine.generate(STORY, params, adapter=v).text for v in ("v1", "v2")}
        registry.set_current("v1")
        engine.refresh()
        reply = engine.stream(STORY, params)
        pieces = iter(reply)
        text = next(pieces)
        registry.set_current("v2")
        assert engine.refresh() is True
        text += "".join(pieces)
        assert reply.info is not None and reply.info.adapter_version == "v1"
        assert text == alone["v1"]
        assert engine.generate(STORY, params).text == alone["v2"]
        registry.set_current(None)


def test_step_hook_overhead(converted: Path, registry: Registry) -> None:
    """Tokens/s of plain model.generate vs the engine's hooked one, in the same run."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    n = 64
    params = SamplingParams(max_new_tokens=n, temperature=0)
    plain = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    plain_lora = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32),
        registry.path("v1"),
    ).eval()
    engine = ChatEngine(converted, registry)
    ids = torch.tensor([engine._encode(STORY)])

    def plain_tps(model: Any) -> float:
        start = time.perf_counter()
        out = model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)

    def engine_tps(adapter: str | None) -> float:
        info = engine.generate(STORY, params, adapter=adapter)
        return info.new_tokens / (info.latency_ms / 1000)

    def two_at_once(adapters: tuple[str, str]) -> float:
        """Aggregate tokens/s of two concurrent replies (different versions: a switch per step)."""
        infos = []
        threads = [
            threading.Thread(
                target=lambda a=a: infos.append(engine.generate(STORY, params, adapter=a))
            )
            for a in adapters
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(i.new_tokens for i in infos) / (time.perf_counter() - start)

    runs: dict[str, list[float]] = {}
    engine_tps("v1"), engine_tps("v2"), plain_tps(plain)  # warm up, load both adapters
    for _ in range(2):  # interleaved, so drift in machine load hits every variant alike
        for name, fn in {
            "plain model.generate (no adapter)": lambda: plain_tps(plain),
            "engine, bare base (hooks)": lambda: engine_tps(None),
            "plain PeftModel.generate (LoRA v1)": lambda: plain_tps(plain_lora),
            "engine, LoRA v1 (hooks)": lambda: engine_tps("v1"),
            "engine, 2 concurrent on v1 (total)": lambda: two_at_once(("v1", "v1")),
            "engine, 2 concurrent v1+v2 (total)": lambda: two_at_once(("v1", "v2")),
        }.items():
            runs.setdefault(name, []).append(fn())
    tps = {name: statistics.median(v) for name, v in runs.items()}

    # the hooks alone, without a model: what every forward step pays
    hook_calls = 20000
    engine._local.key = None
    start = time.perf_counter()
    for _ in range(hook_calls):
        engine._before_step(engine.model, ())
        engine._after_step(engine.model, (), None)
    per_step_us = (time.perf_counter() - start) / hook_calls * 1e6
    key1, key2 = (engine._adapters.keys[v] for v in ("v1", "v2"))
    start = time.perf_counter()
    for i in range(50):
        engine._activate(key1 if i % 2 else key2)
    switch_ms = (time.perf_counter() - start) / 50 * 1000
    del engine._local.key
    engine.close()

    print()
    for name, value in tps.items():
        print(f"  {name:40s} {value:6.2f} tokens/s")
    base_ratio = tps["engine, bare base (hooks)"] / tps["plain model.generate (no adapter)"]
    lora_ratio = tps["engine, LoRA v1 (hooks)"] / tps["plain PeftModel.generate (LoRA v1)"]
    print(f"  engine/plain: bare {base_ratio:.3f}, LoRA {lora_ratio:.3f}")
    print(f"  hook pair per forward step: {per_step_us:.1f} us; adapter switch: {switch_ms:.2f} ms")
    assert per_step_us < 100
    assert base_ratio > 0.75 and lora_ratio > 0.75  # loose: timings on a shared machine
