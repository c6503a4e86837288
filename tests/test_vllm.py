"""The vLLM backend: refused at start without CUDA (fast tier); on a GPU (`gpu` tier), the
same API served by vLLM with adapters loaded at run time when CURRENT changes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server import add_user, issue_key, serve
from training.registry import Registry


def test_vllm_backend_is_refused_in_one_line_without_cuda(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the backend is not refused here")
    env = {
        **os.environ,
        "TUNELOOP_BACKEND": "vllm",
        "TUNELOOP_MODEL": str(tiny_model_dir),
        "TUNELOOP_HOME": os.environ["TUNELOOP_HOME"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: TUNELOOP_BACKEND=vllm needs a CUDA GPU and none is visible here; "
        "unset it to serve with the built-in engine"
    ]


def test_unknown_backend_is_a_settings_error(tiny_model_dir: Path) -> None:
    env = {**os.environ, "TUNELOOP_BACKEND": "tgi", "TUNELOOP_MODEL": str(tiny_model_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and "TUNELOOP_BACKEND" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _vllm_sized_model(dest: Path) -> Path:
    """The tiny tokenizer in a small random Llama whose head size vLLM's kernels take (64)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.tiny import build_tiny_model

    tiny = build_tiny_model(dest.parent / "tiny-src")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def _adapter(model_dir: Path, dest: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        get_peft_model(base, config).save_pretrained(str(dest))
    return dest


@pytest.mark.gpu
def test_vllm_serves_the_api_and_loads_a_promoted_adapter_at_run_time(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'tuneloop[vllm]')")
    from openai import OpenAI

    model = _vllm_sized_model(tmp_path / "model")
    home = tmp_path / "home"
    home.mkdir()
    add_user(home, "erin", "expert", "pw-erin-secret")
    registry = Registry(home / "adapters")
    for seed in (1, 2):
        registry.register(f"v{seed}", _adapter(model, tmp_path / f"a{seed}", seed))
    registry.set_current("v1")
    key = issue_key(home, "erin")
    ask = [{"role": "user", "content": "How do I water tomatoes?"}]
    with serve(home, model=str(model), timeout=600, TUNELOOP_BACKEND="vllm") as (url, proc):
        api = OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
        texts = {}
        for version in ("tuneloop:base", "v1", "v2"):
            done = api.chat.completions.create(
                model=version, messages=ask, temperature=0, max_tokens=32
            )
            texts[version] = done.choices[0].message.content
        assert len(set(texts.values())) == 3, "each version answers differently"
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in api.chat.completions.create(
                model="tuneloop", messages=ask, temperature=0, max_tokens=32, stream=True
            )
            if c.choices
        )
        assert streamed == texts["v1"]
        registry.set_current("v2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = api.chat.completions.create(
                model="tuneloop", messages=ask, temperature=0, max_tokens=32
            )
            if done.system_fingerprint == "tuneloop-v2":
                break
            time.sleep(0.5)
        assert done.choices[0].message.content == texts["v2"]
        assert proc.poll() is None
    with sqlite3.connect(home / "tuneloop.db") as db:
        versions = {v for (v,) in db.execute("select adapter_version from responses")}
    assert versions == {None, "v1", "v2"}
