"""The GPU choices a round makes (QLoRA or bf16 LoRA, gradient checkpointing, how the base
is placed and stored), decided on this CPU from sizes and the launcher's environment, and
the gate evaluating at the precision `serve` runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from tests.configs import round_config
from training.device.machine import count_parameters, qlora_saves_memory
from training.device.precision import (
    BF16_CPU_FLAGS,
    cpu_flags,
    cpu_has_bf16,
    inference_dtype,
    train_in_bf16,
)
from training.models import base_load_kwargs
from training.round_config import RoundConfig, resolved
from training.trainer_args import sft_config

GB = 1024**3


def test_qlora_is_chosen_only_where_the_bf16_base_would_crowd_the_gpu() -> None:
    smollm2, llama_8b = 134_515_008, 8_030_261_248
    assert not qlora_saves_memory(smollm2, 24 * GB)  # 0.27 GB of 24: bf16 LoRA
    assert not qlora_saves_memory(1_711_376_384, 24 * GB)  # SmolLM2-1.7B: 3.4 GB of 24
    assert qlora_saves_memory(llama_8b, 24 * GB)  # 16 GB of 24: QLoRA
    assert not qlora_saves_memory(llama_8b, 141 * GB)  # an H200 holds it in bf16
    assert qlora_saves_memory(llama_8b, 40 * GB)
    assert not qlora_saves_memory(llama_8b, 40 * GB, shards=2)  # FSDP halves each share


def test_parameters_are_counted_from_the_safetensors_headers(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # tied embeddings are stored once, as the model holds them once
    assert count_parameters(tiny_model_dir) == sum(p.numel() for p in model.parameters())


def test_on_a_cpu_nothing_is_quantised_or_checkpointed(tiny_model_dir: Path) -> None:
    for asked in (None, True):
        config = resolved(round_config(qlora=asked), tiny_model_dir)
        assert config.qlora is False and config.gradient_checkpointing is False
    config = resolved(round_config(gradient_checkpointing=True), tiny_model_dir)
    assert config.gradient_checkpointing is True  # an explicit setting wins


def test_a_cpu_trains_in_bf16_only_with_bf16_instructions_unless_told(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    zen4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512vl\n"
    older = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512vl\n"
    assert "avx512_bf16" in cpu_flags(zen4) and not cpu_flags(older) & BF16_CPU_FLAGS
    for text, native in ((zen4, True), (older, False), ("", False)):
        info = tmp_path / f"cpuinfo-{native}-{len(text)}"
        info.write_text(text, encoding="utf-8")
        assert cpu_has_bf16(info) is native
    assert cpu_has_bf16(tmp_path / "absent") is False
    assert train_in_bf16(None, cuda=True) and train_in_bf16(True, cuda=False)
    assert not train_in_bf16(False, cuda=False)
    assert not train_in_bf16(None, cuda=False, launched=True)  # several CPU processes: fp32
    assert train_in_bf16(None, cuda=True, launched=True)
    # auto follows this machine's CPU; a setting wins; bf16 training loads a bf16 base
    assert resolved(round_config(), tiny_model_dir).bf16 is cpu_has_bf16()
    for asked, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        config = resolved(round_config(bf16=asked), tiny_model_dir)
        assert config.bf16 is asked
        assert base_load_kwargs(config, cuda=False) == {"dtype": dtype}
        assert sft_config(config, tmp_path / "sft", 2, tmp_path).bf16 is asked


def test_each_process_loads_its_base_on_its_own_gpu_unless_the_launcher_shards_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    qlora = round_config(qlora=True)
    kwargs = base_load_kwargs(qlora, cuda=True)  # one process
    assert kwargs["device_map"] == {"": 0} and kwargs["dtype"] == torch.bfloat16
    quant = kwargs["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_storage == torch.uint8
    assert "quantization_config" not in base_load_kwargs(round_config(qlora=False), cuda=True)

    monkeypatch.setenv("WORLD_SIZE", "2")
    for env in ({"ACCELERATE_USE_FSDP": "true"}, {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}):
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            kwargs = base_load_kwargs(qlora, cuda=True)
            assert "device_map" not in kwargs  # FSDP / ZeRO-3 place the shards
            # 4-bit weights stored as bf16, so that FSDP / ZeRO-3 can shard them
            assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16


@pytest.mark.parametrize("name", ["TUNELOOP_TRAIN_BF16", "TUNELOOP_INFER_BF16"])
def test_bf16_settings_take_auto(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """`auto` is what the reference documents for both: the same as leaving them unset."""
    monkeypatch.setenv(name, "auto")
    field = name.removeprefix("TUNELOOP_").lower()
    assert getattr(Settings(), field) is None
    monkeypatch.setenv(name, "true")
    assert getattr(Settings(), field) is True


def test_speed_settings_reach_trls_configs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_PADDING_FREE", "true")
    monkeypatch.setenv("TUNELOOP_QLORA", "auto")
    monkeypatch.setenv("TUNELOOP_LOAD_IN_4BIT", "true")
    config = RoundConfig.from_settings(Settings())
    assert config.qlora is None and config.gradient_checkpointing is None
    assert config.padding_free and not config.liger_kernel and config.serve_in_4bit
    sft = sft_config(resolved(config, tmp_path), tmp_path / "sft", 3, tmp_path)
    assert sft.padding_free and not sft.gradient_checkpointing and not sft.use_liger_kernel


def test_the_gate_evaluates_at_the_precision_serve_runs(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`tuneloop train` with TUNELOOP_LOAD_IN_4BIT=true (how serve loads the base) and
    QLoRA off: the evaluation loads the base 4-bit, as served, not as trained; and in the
    dtype serve answers in (TUNELOOP_INFER_BF16)."""
    import training.eval.evaluate
    import training.promotion
    from feedback.store import Store
    from tests.cli import run_cli
    from tests.tiny import add_pairs

    real = training.eval.evaluate.evaluate_models
    asked: list[tuple] = []

    def spy(*args: object, load_in_4bit: bool = False, **kwargs: object) -> object:
        asked.append((load_in_4bit, kwargs.get("bf16")))
        return real(*args, **kwargs)  # no bitsandbytes on this CPU: evaluate unquantised

    monkeypatch.setattr(training.promotion, "evaluate_models", spy)
    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_TRACKER", "none")
    monkeypatch.setenv("TUNELOOP_EVAL_GENERATE", "false")
    monkeypatch.setenv("TUNELOOP_TRAIN_MAX_STEPS", "1")
    monkeypatch.setenv("TUNELOOP_QLORA", "false")  # trained unquantised...
    monkeypatch.setenv("TUNELOOP_LOAD_IN_4BIT", "true")  # ...but served 4-bit
    monkeypatch.setenv("TUNELOOP_INFER_BF16", "true")
    Settings().home.mkdir(parents=True)
    add_pairs(Store.open(Settings().database), 6, prompt="How do I bake bread number {i}?")
    code, out, err = run_cli(monkeypatch, capsys, "train", "--no-promote", "--json")
    assert code == 0, err[-2000:]
    assert asked == [(True, True)]


def test_answering_is_bf16_on_a_cpu_with_bf16_instructions_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import training.device.precision

    assert inference_dtype(True, cuda=False) == "bfloat16"
    assert inference_dtype(False, cuda=True) == "float32"
    assert inference_dtype(None, cuda=True) == "auto"  # a GPU: the checkpoint's dtype
    assert inference_dtype(None, cuda=False) == ("bfloat16" if cpu_has_bf16() else "float32")
    monkeypatch.setattr(training.device.precision, "cpu_has_bf16", lambda: False)
    assert inference_dtype(None, cuda=False) == "float32"  # emulated bf16 would be slower
    assert inference_dtype(True, cuda=False) == "bfloat16"


def test_generate_and_the_chat_engine_answer_in_bf16_when_asked(
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    """TUNELOOP_INFER_BF16=true: `tuneloop generate` answers with a bf16 base (the adapter's
    weights stay fp32) and gives exactly the replies of that model at the same batch size;
    the chat engine loads the same way."""
    import json

    import torch

    from app.serving.engine import ChatEngine, SamplingParams
    from tests.cli import run_cli
    from tests.tiny import tiny_registry
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.prompt_files import row_conversation

    registry = tiny_registry(
        monkeypatch, Settings().home, tiny_model_dir, tiny_adapters, max_new_tokens=24
    )
    registry.set_current("v1")
    monkeypatch.setenv("TUNELOOP_INFER_BF16", "true")
    questions = ["How do I water tomatoes?", "Hi", "Which month comes after June?"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--in", str(src), "--out", str(out))
    assert code == 0, err[-2000:]
    replies = [json.loads(line)["reply"] for line in out.read_text().splitlines()]

    model, tok = load_for_generation(tiny_model_dir, tiny_adapters["v1"], bf16=True)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    system = Settings().system_prompt()
    conversations = [row_conversation({"prompt": q}, system) for q in questions]
    assert replies == generate_replies(model, tok, conversations, max_new_tokens=24)
    fp32 = load_for_generation(tiny_model_dir, tiny_adapters["v1"], bf16=False)
    assert next(fp32[0].parameters()).dtype == torch.float32

    with ChatEngine(tiny_model_dir, registry, context_tokens=512, bf16=True) as engine:
        assert next(engine.model.parameters()).dtype == torch.bfloat16
        chat = engine.generate(
            conversations[0][1:], SamplingParams(max_new_tokens=8, temperature=0.0), adapter="v1"
        )
    assert chat.text


@pytest.mark.parametrize("bf16", ["true", "false"])
def test_tuneloop_train_on_a_cpu_in_the_precision_asked(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    bf16: str,
) -> None:
    """`tuneloop train` with TUNELOOP_TRAIN_BF16: the round says how it trains, trains, and
    saves fp32 LoRA weights either way (bf16 is for the matmuls, not for what is learned)."""
    import torch
    from safetensors.torch import load_file

    from feedback.store import Store
    from tests.cli import run_cli
    from tests.tiny import add_pairs

    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_TRACKER", "none")
    monkeypatch.setenv("TUNELOOP_EVAL_GENERATE", "false")
    monkeypatch.setenv("TUNELOOP_TRAIN_MAX_STEPS", "2")
    monkeypatch.setenv("TUNELOOP_TRAIN_BF16", bf16)
    monkeypatch.setenv("TUNELOOP_HELDOUT_MIN_ITEMS", "0")  # the plain 10%: pairs left to train
    Settings().home.mkdir(parents=True)
    add_pairs(Store.open(Settings().database), 12, prompt="How do I bake bread number {i}?")
    code, out, err = run_cli(monkeypatch, capsys, "train", "--no-promote", "--json")
    assert code == 0, err[-2000:]
    said = {line for line in err.splitlines() if "training on the CPU" in line}
    assert said and all(("bf16" in m) == (bf16 == "true") for m in said), said
    rounds = sorted((Settings().rounds_dir).iterdir())
    for stage in ("sft", "dpo"):
        weights = load_file(rounds[-1] / stage / "adapter" / "adapter_model.safetensors")
        assert weights and {w.dtype for w in weights.values()} == {torch.float32}
        assert all(torch.isfinite(w).all() for w in weights.values())
