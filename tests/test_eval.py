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

from app.cli_eval import make_eval_gate
from app.config import Settings
from tests.cli import run_cli
from tests.tiny import tiny_registry
from training.evalsets import EvalError, format_table, gate_reasons, load_set, parse_margins
from training.generate import generate_replies, load_for_generation, row_conversation
from training.registry import Registry
from training.scorers import (
    Scorer,
    ScorerError,
    exact_match,
    json_valid,
    load_scorer,
    resolve_scorers,
    rubric_scorer,
)

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
    model, tok = load_for_generation(tiny_model_dir)
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
        load_scorer("training.scorers:nope")
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
    assert f"({metrics['v1']['exact'] - 1:+.3f})" in lines[2]
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
        f"rubric,json,{scorer_file}:words,training.scorers:exact_match",
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
        "training.scorers:exact_match",
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


# -- the promotion gate ---------------------------------------------------------------------
def test_gate_reasons_and_margins(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "x"}\n')
    from training.evalsets import EvalRun, GenParams

    run = EvalRun(load_set(path), ["v1", "v2"], ["exact"], GenParams(), "m")
    run.metrics = {
        "v1": {"exact": 0.5, "rubric_pass": 0.5},
        "v2": {"exact": 0.5, "rubric_pass": 0.52},
    }
    assert gate_reasons(run, "v2", "v1", {}) == []
    assert gate_reasons(run, "v2", "v1", {"rubric_pass": 0.02, "exact": 0}) == []
    reasons = gate_reasons(run, "v2", "v1", {"rubric_pass": 0.05})
    assert len(reasons) == 1 and reasons[0].startswith("s: rubric_pass 0.520 for v2 vs 0.500")
    assert gate_reasons(run, "v1", "v2", {})[0].startswith("s: rubric_pass 0.500 for v1")
    assert gate_reasons(run, "v1", "v2", {"rubric_pass": -0.1}) == []
    assert "gated metric 'bleu' was not returned" in gate_reasons(run, "v2", "v1", {"bleu": 0})[0]
    assert parse_margins(" rubric_pass=0.05, exact=0 ") == {"rubric_pass": 0.05, "exact": 0.0}
    with pytest.raises(EvalError, match="bad margin 'exact'"):
        parse_margins("exact")
    assert "exact" in format_table(run)


def test_eval_gate_blocks_a_candidate_that_loses_on_a_gated_metric(
    env: Registry, eval_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert make_eval_gate(Settings()) is None  # no gate sets: no gate
    monkeypatch.setenv("TUNELOOP_GATE_EVAL_SETS", str(eval_set))
    monkeypatch.setenv("TUNELOOP_EVAL_SCORER", "exact")
    monkeypatch.setenv("TUNELOOP_GATE_MIN_MARGINS", "exact=0")
    gate = make_eval_gate(Settings())
    assert gate is not None
    # serving: the bare base, whose replies are the references; v1 loses on exact
    reasons = gate("v1", None)
    assert len(reasons) == 1 and reasons[0].startswith("demo_set: exact ")
    assert "for v1 vs 1.000 for base" in reasons[0]
    assert env.info("v1")["evals"]["demo_set"]["metrics"]["exact"] < 1.0  # recorded too
    # a metric that is not gated does not block; a tolerated loss does not block
    monkeypatch.setenv("TUNELOOP_GATE_MIN_MARGINS", "exact=-1")
    assert make_eval_gate(Settings())("v1", None) == []  # type: ignore[misc]
    # an eval that cannot run blocks too, saying why
    monkeypatch.setenv("TUNELOOP_EVAL_SCORER", "json,nosuch.module:f")
    reasons = make_eval_gate(Settings())("v1", None)  # type: ignore[misc]
    assert len(reasons) == 1 and reasons[0].startswith("eval gate could not run: scorer")


def test_a_round_with_the_eval_gate_is_not_promoted_when_it_loses(
    env: Registry, eval_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real training round (tiny model) whose own gate lets everything through; the eval
    gate then stops the candidate, CURRENT stays where it was, and the reason names the metric.
    """
    from feedback.records import NewExample, NewPreference
    from feedback.store import Store
    from training.evaluate import EvalSettings, GateMargins
    from training.round import RoundConfig, run_round

    monkeypatch.setenv("TUNELOOP_GATE_EVAL_SETS", str(eval_set))
    monkeypatch.setenv("TUNELOOP_EVAL_SCORER", "exact")
    monkeypatch.setenv("TUNELOOP_GATE_MIN_MARGINS", "exact=0")
    settings = Settings()
    store = Store.open(settings.database)
    # 30 prompts, so that the stable split holds some out and the round's own metrics exist
    topics = ("bread", "soup", "tomatoes", "the weather", "a spider", "a bicycle chain")
    asks = (
        "How do I care for {t}?",
        "Tell me about {t}, please.",
        "Any quick tips on {t}?",
        "What should I know about {t}?",
        "Is {t} hard for a beginner?",
    )
    prompts = [ask.format(t=t) for t in topics for ask in asks]
    # Each prompt its own answer: a train row repeating a held-out answer is not trained on.
    answers = [f"Paris is the capital of France, {i}." for i in range(len(prompts))]
    store.add_bulk(
        preferences=[
            NewPreference(prompt=[{"role": "user", "content": p}], chosen=a, rejected="No idea.")
            for p, a in zip(prompts, answers, strict=True)
        ],
        examples=[
            NewExample(
                messages=[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
            )
            for p, a in zip(prompts, answers, strict=True)
        ],
    )
    lenient = GateMargins(
        min_pref_acc_gain=-1.0,
        min_loss_decrease=-1e9,
        min_rubric_gain=-1.0,
        max_loss_increase=1e9,
        max_pref_acc_drop=1.0,
        max_rubric_drop=1.0,
        max_general_loss_increase=1e9,
        max_general_pass_drop=1.0,
    )
    config = RoundConfig(
        sft_steps=2,
        dpo_steps=2,
        batch_size=4,
        sft_learning_rate=5e-2,
        dpo_learning_rate=5e-2,
        eval=EvalSettings(generate=False),
        margins=lenient,
    )
    result = run_round(
        store=store,
        registry=env,
        model_dir=Path(settings.model or ""),
        config=config,
        rounds_dir=settings.home / "rounds",
        extra_gate=make_eval_gate(settings),
    )
    assert result.status == "rejected", result
    assert len(result.reasons) == 1 and result.reasons[0].startswith("demo_set: exact ")
    assert f"for {result.version} vs 1.000 for base" in result.reasons[0]
    assert env.current() is None  # still the bare base
    info = env.info(str(result.version))
    assert info["status"] == "rejected" and info["reasons"] == result.reasons
    assert info["evals"]["demo_set"]["metrics"]["exact"] < 1.0


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
    from training.scorers import combined_metrics

    metrics = combined_metrics(scorers, evalset.rows, ideal)
    assert metrics["rubric_pass"] == 1.0
    assert metrics["right_policy"] == 1.0 and metrics["no_wrong_policy"] == 1.0
    wrong = combined_metrics(scorers, evalset.rows, ["POL-99 <b>no</b>"] * len(ideal))
    assert wrong["rubric_pass"] == 0.0 and wrong["right_policy"] == 0.0
