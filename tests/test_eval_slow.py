"""`tuneloop generate` and `tuneloop eval` on the real embedded SmolLM2 with two adapters.

The adapters are random LoRA weights made here with PEFT (`init_lora_weights=False`), so
each answers differently from the base and from the other, as trained versions would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config import REPO_DATA_DIR, Settings
from tests.cli import run_cli
from training.registry import Registry

pytestmark = pytest.mark.slow
MAX_NEW = 16


def make_adapter(model_dir: Path, dest: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
    model.save_pretrained(str(dest))
    return dest


@pytest.fixture
def real(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Registry]:
    """The embedded SmolLM2 under this test's home; v1 and v2; CURRENT -> v1."""
    model_dir = smollm2_dir
    settings = Settings()
    registry = Registry(settings.adapters_dir)
    for seed in (1, 2):
        registry.register(f"v{seed}", make_adapter(model_dir, tmp_path / f"a{seed}", seed))
    registry.set_current("v1")
    monkeypatch.setenv("TUNELOOP_GENERATE_MAX_NEW_TOKENS", str(MAX_NEW))
    return model_dir, registry


def test_generate_and_eval_on_smollm2_with_two_adapters(
    real: tuple[Path, Registry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.prompt_files import row_conversation

    model_dir, registry = real
    # Batching must not change a reply: checked in fp32. In bf16 (the default on a CPU with
    # bf16 instructions) rounding flips near-tie tokens with the batch's shape: 3 of these 5
    # replies matched one at a time, measured.
    monkeypatch.setenv("TUNELOOP_INFER_BF16", "false")
    demo = [json.loads(line) for line in (REPO_DATA_DIR / "eval_demo.jsonl").open()][:5]
    rows: list[dict[str, Any]] = [
        *demo[:4],
        {
            "messages": [{"role": "user", "content": demo[4]["prompt"]}],
            "customer": demo[4]["customer"],
        },
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "generate", "--in", str(src), "--out", str(out), "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["generated"] == len(rows)
    got = [json.loads(line) for line in out.open()]
    assert [r["adapter"] for r in got] == ["v1"] * len(rows)  # CURRENT, recorded as v1
    assert [r.get("customer") for r in got] == [r.get("customer") for r in rows]

    # batched CLI replies equal one-at-a-time generation with the same adapter
    model, tok = load_for_generation(model_dir, registry.path("v1"), bf16=False)
    system = Settings().system_prompt()
    single = generate_replies(
        model,
        tok,
        [row_conversation(r, system) for r in rows],
        max_new_tokens=MAX_NEW,
        batch_size=1,
    )
    same = sum(a == r["reply"] for a, r in zip(single, got, strict=True))
    assert same >= len(rows) - 1, (single, [r["reply"] for r in got])
    del model

    evalset = tmp_path / "demo4.jsonl"
    evalset.write_text("".join(json.dumps(r) + "\n" for r in demo[:4]), encoding="utf-8")
    scorer = f"rubric,{REPO_DATA_DIR / 'eval_scorers.py'}:right_policy"
    args = ["eval", "--set", str(evalset), "--adapters", "base,CURRENT,v2", "--scorer", scorer]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["adapters"] == ["base", "v1", "v2"]
    assert result["cached"] == {"base": False, "v1": False, "v2": False}
    for label in result["adapters"]:
        metrics = result["metrics"][label]
        assert {"rubric_pass", "rubric.short", "right_policy", "no_wrong_policy"} <= set(metrics)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert registry.info("v2")["evals"]["demo4"]["metrics"] == result["metrics"]["v2"]

    # the three versions answered differently, and a rerun reuses every reply
    from training.eval.eval_results import recorded

    settings = Settings()
    assert set(recorded(registry, settings.evals_dir)) == {"base", "v1", "v2"}
    caches = [
        json.loads(p.read_text())["replies"] for p in (settings.evals_dir / "cache").glob("*.json")
    ]
    assert len(caches) == 3 and len({tuple(c) for c in caches}) == 3
    assert all(len(" ".join(c).split()) > 10 for c in caches)
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "cached replies for base, v1, v2" in stdout
    assert stdout.splitlines()[1].split() == ["metric", "base", "v1", "v2"]


def test_eval_pairwise_judged_by_the_embedded_smollm2(
    real: tuple[Path, Registry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """`--scorer pairwise` with TUNELOOP_JUDGE_MODEL=embedded: plumbing on a real chat model
    (SmolLM2-135M's verdicts are near chance; a real deployment names a stronger judge)."""
    from training.eval import judge
    from training.eval.generate import load_for_generation
    from training.eval.prompt_files import row_conversation

    model_dir, _ = real
    monkeypatch.setenv("TUNELOOP_JUDGE_MODEL", "embedded")
    demo = [json.loads(line) for line in (REPO_DATA_DIR / "eval_demo.jsonl").open()][:4]
    evalset = tmp_path / "pairs4.jsonl"
    evalset.write_text("".join(json.dumps(r) + "\n" for r in demo), encoding="utf-8")
    args = ["eval", "--set", str(evalset), "--adapters", "base,v1", "--scorer", "pairwise,rubric"]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    metrics = json.loads(stdout)["metrics"]
    assert metrics["base"]["pairwise_win"] == 0.5
    v1 = metrics["v1"]
    assert 0.0 <= v1["pairwise_win_low"] <= v1["pairwise_win"] <= v1["pairwise_win_high"] <= 1.0
    assert v1["pairwise_win"] in {k / 8 for k in range(9)}  # 4 rows, 2 orders each
    assert "rubric_pass" in v1

    # The judge really read the replies: SmolLM2 has single tokens for its labels, and its
    # margins differ between the two orders of the same pair.
    model, tok = load_for_generation(model_dir)
    assert all(judge.label_token_ids(tok))
    conv = row_conversation(demo[0], Settings().system_prompt())
    a, b = "Hi Lena, see POL-3.\n\n— Brightwater Support", "I don't know."
    margins = judge.first_label_margins(
        model, tok, [judge.judge_prompt(conv, a, b), judge.judge_prompt(conv, b, a)]
    )
    assert len(margins) == 2 and margins[0] != margins[1]
