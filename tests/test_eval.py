"""`tuneloop eval`, the scorers, the reply cache, recorded results and the eval gate (tiny model).

The tiny model's replies are gibberish, so the eval sets here take their references from
the base model's own greedy replies: `exact` then has to tell base (1.0) from an adapter
(lower), which only works if the right adapter answered each column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.cli import run_cli
from tests.tiny import tiny_registry
from training.eval.eval_results import format_table
from training.eval.evalsets import item_metrics, load_set
from training.eval.generate import generate_replies, load_for_generation
from training.eval.prompt_files import row_conversation
from training.eval.scorers import (
    Scorer,
    ScorerError,
    exact_match,
    json_valid,
    load_scorer,
    resolve_scorers,
    rubric_scorer,
)
from training.registry import Registry

MAX_NEW = 16
REPO_RUBRIC = Path(__file__).resolve().parent.parent / "data" / "rubric.json"
QUESTIONS = ["How do I water tomatoes?", "Hi", "Which month comes after June?", "Hello!"]


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    _isolated_home: Path,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
) -> Registry:
    """TUNELOOP_MODEL = the tiny model; v1 and v2 registered; CURRENT unset (bare base)."""
    return tiny_registry(
        monkeypatch, _isolated_home, tiny_model_dir, tiny_adapters, max_new_tokens=MAX_NEW
    )


@pytest.fixture(scope="module")
def base_replies(tiny_model_dir: Path) -> list[str]:
    """The bare base model's greedy replies to QUESTIONS with the deployment's system prompt."""
    system = Settings(model=str(tiny_model_dir)).system_prompt()
    model, tok = load_for_generation(tiny_model_dir, bf16=False)  # as the CLI answers
    rows = [{"prompt": q} for q in QUESTIONS]
    return generate_replies(
        model, tok, [row_conversation(r, system) for r in rows], max_new_tokens=MAX_NEW
    )


@pytest.fixture
def eval_set(tmp_path: Path, base_replies: list[str]) -> Path:
    """Rows whose references are the base model's replies (the last row has none)."""
    rows: list[dict[str, Any]] = [
        {"prompt": q, "reference": r, "customer": "Dana"}
        for q, r in zip(QUESTIONS[:-1], base_replies[:-1], strict=True)
    ]
    rows.append({"prompt": QUESTIONS[-1]})
    path = tmp_path / "demo_set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def eval_json(monkeypatch, capsys, *args: str) -> dict[str, Any]:
    code, out, err = run_cli(monkeypatch, capsys, "eval", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# -- built-in scorers on known replies ------------------------------------------------------
def test_builtin_scorers_on_known_replies() -> None:
    rows = [{"reference": "Paris"}, {"reference": " the  SEA "}, {}, {"reference": "x"}]
    replies = ["Paris\n", "The sea", "anything", "y"]
    assert exact_match(rows, replies) == {"exact": 1 / 3, "exact_normalized": 2 / 3}
    with pytest.raises(ScorerError, match='no row has a "reference"'):
        exact_match([{}], ["a"])
    assert json_valid([{}] * 4, ['{"a": 1}', " [1, 2] ", "{'a': 1}", "yes"]) == {"json_valid": 0.5}
    score = rubric_scorer(REPO_RUBRIC)
    good = "Hi Dana, restart the router (POL-7).\n\n— Brightwater Support"
    bad = "<b>Restart</b> it."
    metrics = score([{"customer": "Dana"}, {}], [good, bad])
    assert metrics["rubric_pass"] == 0.5
    assert metrics["rubric.greets_by_name"] == 1.0  # applies to the row with a customer only
    assert metrics["rubric.no_markup"] == 0.5 and metrics["rubric.signs_off"] == 0.5


def test_scorer_results_are_checked_and_named() -> None:
    def bad(rows: list[dict], replies: list[str]) -> Any:
        return [1.0]

    with pytest.raises(ScorerError, match="scorer 'mine' returned list, not a dict"):
        Scorer("mine", bad)([{}], ["a"])
    with pytest.raises(ScorerError, match="scorer 'm' returned str for metric 'acc'"):
        Scorer("m", lambda rows, replies: {"acc": "high"})([{}], ["a"])
    with pytest.raises(ScorerError, match="scorer 'm' returned nan for metric 'acc'"):
        Scorer("m", lambda rows, replies: {"acc": float("nan")})([{}], ["a"])
    with pytest.raises(ScorerError, match="scorer 'm' raised ZeroDivisionError"):
        Scorer("m", lambda rows, replies: {"acc": 1 / 0})([{}], ["a"])
    with pytest.raises(ScorerError, match="unknown scorer 'bleu'"):
        load_scorer("bleu")
    with pytest.raises(ScorerError, match="has no function 'nope'"):
        load_scorer("training.eval.scorers:nope")
    assert [s.name for s in resolve_scorers("auto", [{"reference": "a"}], rubric_path=None)] == [
        "exact"
    ]
    assert [s.name for s in resolve_scorers("auto", [{}], rubric_path=REPO_RUBRIC)] == ["rubric"]
    with pytest.raises(ScorerError, match="no scorer applies"):
        resolve_scorers("auto", [{}], rubric_path=None)


# -- tuneloop eval --------------------------------------------------------------------------
def test_eval_exact_side_by_side_and_recorded(
    env: Registry, eval_set: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    env.set_current("v2")
    result = eval_json(
        monkeypatch,
        capsys,
        "--set",
        str(eval_set),
        "--scorer",
        "exact",
        "--adapters",
        "base,v1,CURRENT",
    )
    assert result["adapters"] == ["base", "v1", "v2"]  # CURRENT recorded as what it named
    assert result["rows"] == 4 and result["scorers"] == ["exact"]
    metrics = result["metrics"]
    assert metrics["base"]["exact"] == 1.0  # the references are the base model's replies
    assert metrics["v1"]["exact"] < 1.0 and metrics["v2"]["exact"] < 1.0
    assert result["diff_vs_first"]["v1"]["exact"] == pytest.approx(metrics["v1"]["exact"] - 1)
    # paired over the 3 rows with a reference: an interval around the difference
    low, high = result["interval_vs_first"]["v1"]["exact"]
    assert low <= result["diff_vs_first"]["v1"]["exact"] <= high and low < high
    assert result["cached"] == {"base": False, "v1": False, "v2": False}

    # recorded with the versions, and for base under HOME/evals/base/
    assert env.info("v1")["evals"]["demo_set"]["metrics"] == metrics["v1"]
    assert env.info("v2")["evals"]["demo_set"]["metrics"] == metrics["v2"]
    home = Settings().home
    base_file = json.loads((home / "evals" / "base" / "demo_set.json").read_text())
    assert base_file["metrics"] == metrics["base"] and base_file["rows"] == 4

    # the text table: a metric per row, an adapter per column, differences to the first
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "eval",
        "--set",
        str(eval_set),
        "--scorer",
        "exact",
        "--adapters",
        "base,v1",
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["metric", "base", "v1"]
    assert lines[2].split()[:2] == ["exact", "1.000"]
    assert f"({metrics['v1']['exact'] - 1:+.3f} [" in lines[2]  # with its interval
    assert "cached replies for base, v1" in lines[0]


def test_eval_rubric_json_and_custom_scorers(
    env: Registry,
    eval_set: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    base_replies: list[str],
) -> None:
    scorer_file = tmp_path / "my_scorer.py"
    scorer_file.write_text(
        "def words(rows, replies):\n"
        "    assert len(rows) == len(replies)\n"
        "    return {'neg_words': -sum(len(r.split()) for r in replies) / len(replies),\n"
        "            'rows_with_customer': sum('customer' in r for r in rows)}\n",
        encoding="utf-8",
    )
    result = eval_json(
        monkeypatch,
        capsys,
        "--set",
        str(eval_set),
        "--adapters",
        "base,v1",
        "--scorer",
        f"rubric,json,{scorer_file}:words,training.eval.scorers:exact_match",
    )
    base = result["metrics"]["base"]
    assert base["rows_with_customer"] == 3
    assert base["neg_words"] == pytest.approx(-sum(len(r.split()) for r in base_replies) / 4)
    assert base["json_valid"] == 0.0 and base["exact"] == 1.0
    assert base["rubric_pass"] == 0.0  # gibberish never signs off
    assert base["rubric.short"] == 1.0 and "rubric.greets_by_name" in base
    assert result["scorers"] == [
        "rubric",
        "json",
        f"{scorer_file}:words",
        "training.eval.scorers:exact_match",
    ]

    # a rubric file of one's own
    rubric = tmp_path / "rubric.json"
    rubric.write_text(json.dumps({"checks": [{"name": "tiny", "max_words": 1}]}))
    result = eval_json(
        monkeypatch,
        capsys,
        "--set",
        str(eval_set),
        "--adapters",
        "base",
        "--scorer",
        "rubric",
        "--rubric",
        str(rubric),
    )
    assert set(result["metrics"]["base"]) == {"rubric_pass", "rubric.tiny"}
    # the default scorer (auto): exact (rows have references) + the data/ rubric
    result = eval_json(monkeypatch, capsys, "--set", str(eval_set), "--adapters", "base")
    assert result["scorers"] == ["exact", "rubric"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "def f(rows, replies):\n    raise RuntimeError('boom')\n",
            "scorer '{spec}' raised RuntimeError: boom",
        ),
        ("def f(rows, replies):\n    return 0.5\n", "scorer '{spec}' returned float, not a dict"),
        (
            "def f(rows, replies):\n    return {'a': None}\n",
            "scorer '{spec}' returned NoneType for metric 'a'",
        ),
    ],
)
def test_failing_scorer_fails_the_eval_and_records_nothing(
    env: Registry,
    eval_set: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    body: str,
    message: str,
) -> None:
    scorer_file = tmp_path / "bad_scorer.py"
    scorer_file.write_text(body, encoding="utf-8")
    spec = f"{scorer_file}:f"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        "--set",
        str(eval_set),
        "--adapters",
        "base,v1",
        "--scorer",
        f"exact,{spec}",
    )
    assert code == 1 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: " + message.format(spec=spec))
    assert "evals" not in env.info("v1")
    assert not (Settings().home / "evals" / "base").exists()


def test_reply_cache(
    env: Registry,
    eval_set: Path,
    tiny_adapters: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["--set", str(eval_set), "--scorer", "exact"]
    first = eval_json(monkeypatch, capsys, *args, "--adapters", "base,v1")
    assert first["cached"] == {"base": False, "v1": False}
    # same versions and set: nothing generated; a new version: only it is generated
    again = eval_json(monkeypatch, capsys, *args, "--adapters", "base,v1,v2")
    assert again["cached"] == {"base": True, "v1": True, "v2": False}
    assert again["metrics"]["v1"] == first["metrics"]["v1"]
    # the key is the adapter's content, not its name: the same files under a new name hit it
    env.register("v1-copy", tiny_adapters["v1"])
    copy = eval_json(monkeypatch, capsys, *args, "--adapters", "v1-copy")
    assert copy["cached"] == {"v1-copy": True}
    # another token budget, or a changed row, misses the cache
    other = eval_json(monkeypatch, capsys, *args, "--adapters", "base", "--max-new-tokens", "5")
    assert other["cached"] == {"base": False}
    rows = eval_set.read_text().splitlines()
    eval_set.write_text("\n".join([rows[0].replace("tomatoes", "roses"), *rows[1:]]) + "\n")
    changed = eval_json(monkeypatch, capsys, *args, "--adapters", "base")
    assert changed["cached"] == {"base": False}
    # so does another deployment system prompt (it is part of every prompt)
    data = tmp_path / "domain"
    data.mkdir()
    (data / "system_prompt.md").write_text("You answer in one word.\n")
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(data))
    assert eval_json(monkeypatch, capsys, *args, "--adapters", "base")["cached"] == {"base": False}


def test_eval_refuses_unknown_adapter_and_bad_set(
    env: Registry,
    eval_set: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, "eval", "--set", str(eval_set), "--adapters", "base,v7"
    )
    assert code == 1 and "'v7' is not registered" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 5}\n')
    code, _, err = run_cli(monkeypatch, capsys, "eval", "--set", str(bad))
    assert code == 1 and "line 2" in err


# -- what the promotion gate reads --------------------------------------------------------
def test_per_row_metrics_pair_rows_and_skip_rows_a_scorer_cannot_score(tmp_path: Path) -> None:
    """The gate pairs eval rows by index: each metric per row, None where it does not apply."""
    rows = [{"prompt": "a", "reference": "x"}, {"prompt": "b"}, {"prompt": "c", "reference": "y"}]
    scorers = resolve_scorers("exact,json", rows, rubric_path=None)
    items = item_metrics(scorers, rows, ["x", "1", "z"])
    assert items["exact"] == [1.0, None, 0.0]  # row 2 has no reference: exact does not apply
    assert items["json_valid"] == [0.0, 1.0, 0.0]  # other scorers still score that row
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "x"}\n')
    from training.eval.evalsets import EvalRun
    from training.eval.generate import GenParams

    run = EvalRun(load_set(path), ["v1", "v2"], ["exact"], GenParams(), "m")
    run.metrics = {"v1": {"exact": 0.5}, "v2": {"exact": 0.75}}
    assert "0.750 (+0.250)" in format_table(run)


def test_the_demo_eval_set_and_example_scorer() -> None:
    """data/eval_demo.jsonl loads; ideal replies pass the rubric and the example scorer."""
    repo = Path(__file__).resolve().parent.parent
    evalset = load_set(repo / "data" / "eval_demo.jsonl")
    assert len(evalset.rows) >= 10
    ideal = [
        (f"Hi {r['customer']}, " if r.get("customer") else "Hello, ")
        + f"see {r['policy']}.\n\n— Brightwater Support"
        for r in evalset.rows
    ]
    scorers = resolve_scorers(
        f"rubric,{repo / 'data' / 'eval_scorers.py'}:right_policy",
        evalset.rows,
        rubric_path=REPO_RUBRIC,
    )
    from training.eval.scorers import combined_metrics

    metrics = combined_metrics(scorers, evalset.rows, ideal)
    assert metrics["rubric_pass"] == 1.0
    assert metrics["right_policy"] == 1.0 and metrics["no_wrong_policy"] == 1.0
    wrong = combined_metrics(scorers, evalset.rows, ["POL-99 <b>no</b>"] * len(ideal))
    assert wrong["rubric_pass"] == 0.0 and wrong["right_policy"] == 0.0
