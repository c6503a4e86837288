"""The real embedded SmolLM2: GGUF conversion, cache, chat, and the cost of the step hooks.

Minutes on CPU (two GGUF loads of ~30-40 s each); run with `pytest -m slow`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.serving.engine import ChatEngine, SamplingParams
from app.serving.modelfiles import EMBEDDED_MODEL_NAME, embedded_gguf, resolve_model_dir
from training.registry import Registry

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="module")
def converted(smollm2_models: Path) -> Path:
    """The embedded GGUF as converted once for the run (tests/real.py: timed there)."""
    return smollm2_models / EMBEDDED_MODEL_NAME


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
    params = SamplingParams(max_new_tokens=16, temperature=0)  # a reply still mid-stream
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
