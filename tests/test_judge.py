"""The `pairwise` scorer: a local judge model compares two adapters' replies, both orders.

The fast tests judge with the tiny random model: its verdicts mean nothing, but every
number `tuneloop eval --scorer pairwise` prints can be recomputed here by hand, one prompt
at a time, from the judge's own log-probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.tiny import tiny_registry
from training.eval import judge
from training.registry import Registry

MAX_NEW = 12
ROWS = [
    {"prompt": "How do I water tomatoes?", "customer": "Dana"},
    {"prompt": "Which month comes after June?"},
    {"prompt": "I would like a recipe for soup."},
    {"messages": [{"role": "user", "content": "How many legs does a spider have?"}]},
]


@pytest.fixture(scope="module")
def judge_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, with its output row for "2" moved so that its verdict turns on what
    it read. The random model alone always says "1" (its last hidden state barely depends
    on the text), so every row would be a tie; here "2" = "1" minus the direction in which
    judge prompts' last hidden states differ most (kept orthogonal to their mean), which
    makes rows and the two orders disagree the way a real judge's verdicts can."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.config import Settings
    from training.eval.prompt_files import row_conversation

    dest = tmp_path_factory.mktemp("judge")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    texts = ["water twice a week", "no idea", "soup is good", "eight legs", "July", "Paris"]
    system = Settings().system_prompt()
    states = []
    for row in ROWS[:2]:
        conv = row_conversation(row, system)  # as the eval will show them to the judge
        for a in texts:
            for b in texts:
                if a != b:
                    ids = tok.apply_chat_template(
                        [{"role": "user", "content": judge.judge_prompt(conv, a, b)}],
                        tokenize=True,
                        add_generation_prompt=True,
                    )["input_ids"]
                    with torch.no_grad():
                        out = model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True)
                    states.append(out.hidden_states[-1][0, -1])
    hidden = torch.stack(states)
    mean = hidden.mean(0)
    direction = torch.linalg.svd(hidden - mean, full_matrices=False).Vh[0]
    direction -= (direction @ mean) / (mean @ mean) * mean
    direction /= ((hidden - mean) @ direction).std()
    one, two = judge.label_token_ids(tok)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for a, b in zip(one, two, strict=False):
            head[b] = head[a] - direction
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    _isolated_home: Path,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
    judge_dir: Path,
    tmp_path: Path,
) -> Path:
    """The tiny model serves (v1, v2 registered), `judge_dir` judges; an eval set of ROWS."""
    tiny_registry(
        monkeypatch, _isolated_home, tiny_model_dir, tiny_adapters, max_new_tokens=MAX_NEW
    )
    monkeypatch.setenv("TUNELOOP_JUDGE_MODEL", str(judge_dir))
    path = tmp_path / "judged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _by_hand(model_dir: Path, rows: list[dict], replies: list[str], ref: list[str]) -> float:
    """The win rate recomputed one prompt at a time (no batching, no padding)."""
    import torch

    from app.config import Settings
    from training.eval.generate import load_for_generation
    from training.eval.prompt_files import row_conversation

    model, tok = load_for_generation(model_dir)
    one, two = (tok.encode(x, add_special_tokens=False) for x in ("1", "2"))

    def prefers_first(prompt: str) -> float:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True
        )
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        a = torch.logsumexp(logp[judge.label_token_ids(tok)[0]], dim=0)
        b = torch.logsumexp(logp[judge.label_token_ids(tok)[1]], dim=0)
        assert len(one) == 1 and len(two) == 1
        return 1.0 if a > b else 0.0 if a < b else 0.5

    system = Settings().system_prompt()
    total = 0.0
    for row, reply, other in zip(rows, replies, ref, strict=True):
        if reply == other:
            total += 0.5
            continue
        conv = row_conversation(row, system)
        first = prefers_first(judge.judge_prompt(conv, reply, other))
        second = 1.0 - prefers_first(judge.judge_prompt(conv, other, reply))
        total += (first + second) / 2
    return total / len(rows)


def test_eval_pairwise_against_the_first_adapter(
    env: Path,
    judge_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["eval", "--set", str(env), "--scorer", "pairwise", "--adapters", "base,v1,v2"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    result = json.loads(out)
    metrics = result["metrics"]
    assert set(metrics["v1"]) == {"pairwise_win", "pairwise_win_low", "pairwise_win_high"}
    # The reference against itself: every row a tie, without asking the judge.
    assert metrics["base"]["pairwise_win"] == 0.5
    low, high = judge.wilson_interval(2.0, 4)
    assert metrics["base"]["pairwise_win_low"] == pytest.approx(low)
    assert metrics["base"]["pairwise_win_high"] == pytest.approx(high)

    from app.config import Settings

    cache = Settings().evals_dir / "cache"
    replies = {
        data["adapter"]: data["replies"]
        for data in (json.loads(p.read_text()) for p in cache.glob("*.json"))
    }
    assert replies["v1"] != replies["base"] and replies["v2"] != replies["base"]
    # Not every row a tie (a judge with no opinion would pass the checks below trivially).
    assert {metrics["v1"]["pairwise_win"], metrics["v2"]["pairwise_win"]} != {0.5}
    for label in ("v1", "v2"):
        m = metrics[label]
        expected = _by_hand(judge_dir, ROWS, replies[label], replies["base"])
        assert m["pairwise_win"] == pytest.approx(expected)
        assert m["pairwise_win_low"] <= m["pairwise_win"] <= m["pairwise_win_high"]
        assert (m["pairwise_win_low"], m["pairwise_win_high"]) == pytest.approx(
            judge.wilson_interval(m["pairwise_win"] * len(ROWS), len(ROWS))
        )
        assert result["diff_vs_first"][label]["pairwise_win"] == pytest.approx(
            m["pairwise_win"] - 0.5
        )

    # v1 as the reference instead: it scores 0.5, and base is judged against it.
    args = ["eval", "--set", str(env), "--scorer", "pairwise", "--adapters", "v1,base"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    swapped = json.loads(out)
    assert swapped["cached"] == {"v1": True, "base": True}
    assert swapped["metrics"]["v1"]["pairwise_win"] == 0.5
    expected = _by_hand(judge_dir, ROWS, replies["base"], replies["v1"])
    assert swapped["metrics"]["base"]["pairwise_win"] == pytest.approx(expected)


def test_pairwise_without_a_judge_model_says_which_setting(
    env: Path, judge_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("TUNELOOP_JUDGE_MODEL")
    args = ["eval", "--set", str(env), "--scorer", "pairwise", "--adapters", "base,v1"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and not out
    assert err.startswith("error: scorer 'pairwise' needs a judge model: set TUNELOOP_JUDGE_MODEL")
    assert len(err.strip().splitlines()) == 1
    from app.config import Settings

    assert not Registry(Settings().adapters_dir).info("v1").get("evals")  # nothing recorded

    monkeypatch.setenv("TUNELOOP_JUDGE_MODEL", str(judge_dir))
    code, _, err = run_cli(monkeypatch, capsys, *args[:-1], "v1")  # one adapter: no reference
    assert code == 1 and "name at least two in --adapters" in err

    monkeypatch.setenv("TUNELOOP_JUDGE_MODEL", str(env.parent / "no-such-model"))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and "not found" in err and len(err.strip().splitlines()) == 1


def test_both_orders_cancel_a_judge_that_always_picks_one_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our own combination logic, with the judge's margins given by hand."""
    conv = [{"role": "user", "content": "q"}]

    def fixed(margins: list[float]):
        def fake(model, tokenizer, prompts, *, batch_size=8):  # noqa: ANN001, ANN202
            assert len(prompts) == len(margins)
            return margins

        return fake

    # Always "1": the candidate wins when first and loses when second -> a tie per row.
    monkeypatch.setattr(judge, "first_label_margins", fixed([2.0, 2.0, 3.0, 3.0]))
    assert judge.pairwise_scores(None, None, [conv] * 2, ["a", "b"], ["x", "y"]) == [0.5, 0.5]
    # Consistent for the candidate on row 1, against it on row 2, a tie in one order on row 3.
    monkeypatch.setattr(judge, "first_label_margins", fixed([1.0, -1.0, -1.0, 1.0, 0.0, -2.0]))
    scores = judge.pairwise_scores(
        None, None, [conv] * 4, ["a", "b", "c", "d"], ["x", "y", "z", "d"]
    )
    assert scores == [1.0, 0.0, 0.75, 0.5]  # row 4: identical replies, never judged
    assert judge.pairwise_metrics(scores)["pairwise_win"] == pytest.approx(2.25 / 4)


def test_wilson_interval_known_values() -> None:
    assert judge.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert judge.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert judge.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert judge.wilson_interval(40, 50) == pytest.approx((0.6696, 0.8876), abs=1e-4)
