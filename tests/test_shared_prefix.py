"""Training rows that start alike run their common start once per batch, with the loss and
the gradients of the plain forward: checked on the model directly, through TRL's fused LM
head (DPO, KTO), and through `tuneloop train` with the setting on and off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli.main import app
from app.config import Settings
from feedback.records import NewExample, NewPreference
from feedback.store import Store
from tests.test_round import ANSWERS, QUESTIONS
from training.device import shared_prefix

runner = CliRunner()
SYSTEM = " ".join(["You answer questions about gardens, bread, soup and the weather."] * 4)


def _lora_model(model_dir: Path, share: bool) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if share:
        assert shared_prefix.share_prefix(base)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(base, config)


def _batch(model_dir: Path, replies: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Chat rows with one system prompt and their own question and reply, right-padded;
    and how many tokens they share."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [
        tok.apply_chat_template(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"How do I care for {topic}?"},
                {"role": "assistant", "content": reply},
            ],
            tokenize=False,
        )
        for topic, reply in zip(["tomatoes", "bread", "soup"], replies, strict=False)
    ]
    ids = [tok(text, add_special_tokens=False)["input_ids"] for text in rows]
    width = max(map(len, ids))
    input_ids = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    n = shared_prefix.shared_length(input_ids, mask)
    return input_ids, mask, n


def _loss_and_grads(model: torch.nn.Module, input_ids, mask, fused: bool) -> tuple:
    labels = input_ids.masked_fill(mask == 0, -100)
    if fused:  # the way TRL's DPO and KTO trainers call the model
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    else:
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads


@pytest.mark.parametrize("fused", [False, True], ids=["causal-lm", "trl-fused-head"])
def test_the_shared_start_gives_the_plain_loss_and_gradients(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    input_ids, mask, n = _batch(tiny_model_dir, ["Water them.", "Let it rise.", "Stir it well."])
    assert n >= shared_prefix.MIN_TOKENS  # the system prompt and the template's opening
    shared_runs: list[int] = []
    real = shared_prefix._forward_shared
    monkeypatch.setattr(
        shared_prefix,
        "_forward_shared",
        lambda *a: (shared_runs.append(a[3]), real(*a))[1],
    )
    results = []
    for share in (False, True):
        model = _lora_model(tiny_model_dir, share)
        if fused:
            from trl.trainer.utils import add_fused_lm_head

            add_fused_lm_head(model.get_base_model())
        model.train()
        results.append(_loss_and_grads(model, input_ids, mask, fused))
    assert shared_runs == [n]  # the shared model took the shared path, once
    (plain_loss, plain_grads), (loss, grads) = results
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_it_steps_aside_when_rows_do_not_start_alike(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_runs: list[int] = []
    monkeypatch.setattr(shared_prefix, "_forward_shared", lambda *a: shared_runs.append(a[3]))
    model = _lora_model(tiny_model_dir, share=True)
    input_ids, mask, n = _batch(tiny_model_dir, ["Water them.", "Let it rise."])
    left = torch.roll(input_ids, 1, dims=1)  # a padding token first: left-padded rows
    left_mask = torch.roll(mask, 1, dims=1)
    left_mask[:, 0] = 0
    with torch.no_grad():
        model(input_ids=left, attention_mask=left_mask)  # padding inside the start
        model(input_ids=input_ids[:1], attention_mask=mask[:1])  # one row
        model(input_ids=input_ids[:, -20:], attention_mask=mask[:, -20:])  # no common start
    assert shared_runs == []
    assert shared_prefix.shared_length(left, left_mask) == 0


def test_a_round_trains_the_same_adapter_with_the_setting_on_or_off(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `tuneloop train`: the rows share the domain's system prompt; with the setting
    on (the default), the round says so, and its SFT and DPO adapters are the ones the
    plain forward trains (dropout off, so the two runs draw nothing differently)."""
    from safetensors.torch import load_file

    data = tmp_path / "domain"
    data.mkdir()
    (data / "system_prompt.md").write_text(SYSTEM + "\n", encoding="utf-8")
    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_TRACKER", "none")
    monkeypatch.setenv("TUNELOOP_EVAL_GENERATE", "false")
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(data))
    monkeypatch.setenv("TUNELOOP_LORA_DROPOUT", "0")
    # fp32: in bf16 the two ways' different matmul shapes round differently
    monkeypatch.setenv("TUNELOOP_TRAIN_BF16", "false")
    monkeypatch.setenv("TUNELOOP_HELDOUT_MIN_ITEMS", "0")
    adapters = {}
    for share in ("false", "true"):
        home = tmp_path / f"home-{share}"
        monkeypatch.setenv("TUNELOOP_HOME", str(home))
        monkeypatch.setenv("TUNELOOP_SHARE_PREFIX", share)
        home.mkdir()
        store = Store.open(Settings().database)
        rows = [
            (
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.format(t=t)}],
                f"{q.format(t=t)} {answer}",  # every reply its own: none is held out twice
            )
            for t, answer in ANSWERS.items()
            for q in QUESTIONS
        ]
        store.add_bulk(
            examples=[
                NewExample(messages=[*p, {"role": "assistant", "content": a}]) for p, a in rows
            ],  # fmt: skip
            preferences=[NewPreference(prompt=p, chosen=a, rejected="No.") for p, a in rows],
        )
        out = runner.invoke(app, ["train", "--no-promote", "--max-steps", "2", "--json"])
        assert out.exit_code == 0, out.output
        said = [line for line in out.output.splitlines() if "training.device.shared_prefix" in line]
        assert bool(said) == (share == "true"), said
        rounds = sorted((home / "rounds").iterdir())
        adapters[share] = {
            stage: load_file(rounds[-1] / stage / "adapter" / "adapter_model.safetensors")
            for stage in ("sft", "dpo")
        }
    # Adam divides each gradient by its own running size, so an element whose gradient is
    # about 0 can turn float rounding into a visible change (1.4e-6 on one of 2,048 with the
    # NLL term in the DPO loss). A real difference, e.g. no gradient into the shared prefix,
    # moves elements by about a step (the learning rate, 1e-4 and up): atol is a tenth of it.
    for stage, tensors in adapters["true"].items():
        plain = adapters["false"][stage]
        assert tensors.keys() == plain.keys()
        for name, value in tensors.items():
            torch.testing.assert_close(value, plain[name], rtol=1e-4, atol=1e-5, msg=name)


def test_held_out_log_probs_compute_the_shared_start_once_and_agree(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation's reply log-probabilities (every held-out item under every model)
    run a batch's common system prompt once: the same numbers as row by row, and the
    model sees the prompt's tokens once per batch, not once per row."""
    from training.eval.evaluate import _encode, reply_logps
    from training.eval.generate import load_for_generation

    model, tok = load_for_generation(tiny_model_dir, tiny_adapters["v1"], bf16=False)
    items = [
        ([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
         [{"role": "assistant", "content": a}])
        for q, a in zip(QUESTIONS, ANSWERS, strict=False)
    ]  # fmt: skip
    alone = reply_logps(model, tok, items, batch_size=1)
    seen: list[int] = []
    body = shared_prefix.decoder_body(model)
    hook = body.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    try:
        batched = reply_logps(model, tok, items, batch_size=len(items))
    finally:
        hook.remove()
    assert [n for _, n in batched] == [n for _, n in alone]
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in alone], abs=1e-3)
    full = sum(len(_encode(tok, p, r, 4096)[0]) for p, r in items)
    assert len(seen) == 2 and sum(seen) < full * 0.6  # the prefix once, then each row's own
