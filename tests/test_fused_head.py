"""On a CPU, TRL's fused LM head projects only the positions that have a label (a round's
rows are mostly prompt), with the loss and gradients of projecting every position; a round
started with `tuneloop train` runs that way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_shared_prefix import _batch, _lora_model
from training.device import fused_head


def _prompt_masked_labels(input_ids: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Labels for the replies only, as a completion-only round trains: the first `start`
    tokens of every row (system prompt, question) and the padding are -100."""
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :start] = -100
    return labels


def test_labels_only_gives_the_loss_and_gradients_of_every_position(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    input_ids, mask, n = _batch(tiny_model_dir, ["Water them.", "Let it rise.", "Stir it well."])
    labels = _prompt_masked_labels(input_ids, mask, n + 8)
    scored: list[int] = []
    real_apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden: torch.Tensor, *args: object) -> object:
        scored.append(hidden.shape[0])
        return real_apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    # TRL's own choice, also where a round earlier in this process switched it
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    results = []
    for labels_only in (False, True):
        if labels_only:
            assert fused_head.score_only_labels()
            assert fused_head.score_only_labels()  # a second call changes nothing
        model = _lora_model(tiny_model_dir, share=False)
        add_fused_lm_head(model.get_base_model())
        model.train()
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((out.loss.detach(), out.log_probs.detach(), grads))
    trained = int((labels[:, 1:] != -100).sum())
    # every position of the shifted batch, then only the labelled ones
    assert scored == [input_ids.shape[0] * (input_ids.shape[1] - 1), trained]
    assert 0 < trained < scored[0] // 2
    (loss_all, lp_all, grads_all), (loss, lp, grads) = results
    torch.testing.assert_close(loss, loss_all, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp, lp_all, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_all.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_all[name], rtol=1e-4, atol=1e-6, msg=name)


def test_tuneloop_train_scores_only_labelled_positions(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    from app.config import Settings
    from feedback.store import Store
    from tests.cli import run_cli
    from tests.tiny import add_pairs

    real_choice = chunked_logprob._use_triton  # TRL's own, whatever ran before in this process
    monkeypatch.setattr(trl_utils, "_use_triton", real_choice)
    scored: list[int] = []
    real_apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden: torch.Tensor, weight: object, bias: object, labels: torch.Tensor, *a: object):
        scored.append(hidden.shape[0])
        assert labels.shape[0] == hidden.shape[0]
        return real_apply(hidden, weight, bias, labels, *a)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_TRACKER", "none")
    monkeypatch.setenv("TUNELOOP_EVAL_GENERATE", "false")
    monkeypatch.setenv("TUNELOOP_TRAIN_MAX_STEPS", "1")
    monkeypatch.setenv("TUNELOOP_HELDOUT_MIN_ITEMS", "0")
    Settings().home.mkdir(parents=True)
    add_pairs(Store.open(Settings().database), 12, prompt="How do I bake bread number {i}?")
    code, out, err = run_cli(monkeypatch, capsys, "train", "--no-promote", "--json")
    assert code == 0, err[-2000:]
    assert trl_utils._use_triton is not real_choice  # the round switched the head over
    assert trl_utils._use_triton(torch.device("cpu")) is True
    assert scored  # SFT and DPO steps went through TRL's head
