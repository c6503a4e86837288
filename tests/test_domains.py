"""The benchmark suite's domains: complete, reproducible, split before tuning, and judged by
experts who read replies their own way.

Every domain folder's item files are what its generator writes; its sets share no prompt; its
gold answers pass its checker and its expert; the expert and the checker disagree in both
directions on crafted replies; the split file lists every folder once; the tools that tune
refuse a test domain and only `bench.loop_quality --final` reads one.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench.domains import DOMAINS, SPLIT_FILE, SplitError, folder_names, load_domain, read_split
from bench.experts import SimulatedExpert
from bench.loop_common import conversation
from training.eval.scorers import load_scorer

ROOT = Path(__file__).resolve().parent.parent
NAMES = folder_names()
# A row's characters (system prompt, turns and answer, as JSON). Measured with SmolLM2's
# tokenizer, the longest rows are 294 tokens (facts, 965 characters here) and 268 (policy,
# 1023): at their 3.3 characters a token, 1200 keeps a row under ~370 tokens.
MAX_ROW_CHARS = 1200


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def key(row: dict) -> str:
    """A row's prompt: its text, or its turns up to the last user turn."""
    if "prompt" in row:
        return str(row["prompt"])
    turns = row["messages"]
    if turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    return json.dumps(turns)


def test_split_lists_every_domain_folder_exactly_once() -> None:
    raw = json.loads(SPLIT_FILE.read_text())
    named = raw["development"] + raw["test"]
    folders = sorted(p.name for p in DOMAINS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert sorted(named) == folders and len(named) == len(set(named))
    assert len(folders) >= 5 and "tickets" in raw["development"] and len(raw["test"]) >= 2
    assert read_split() == {"development": raw["development"], "test": raw["test"]}


def test_a_split_file_that_misses_a_folder_is_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "system_prompt.md").write_text("x")
    (tmp_path / "split.json").write_text(json.dumps({"development": ["a"], "test": ["a"]}))
    with pytest.raises(SplitError, match=r"twice \['a'\], missing \['b'\]"):
        read_split(tmp_path / "split.json")


@pytest.mark.parametrize("name", NAMES)
def test_domain_files_are_what_its_generator_writes(name: str, tmp_path: Path) -> None:
    domain = load_domain(name, allow_test=True)
    spec = importlib.util.spec_from_file_location(f"make_{name}", domain.folder / "make_items.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    files = [domain.pool, domain.gate, domain.test, domain.seeds]
    for path in files:
        assert (tmp_path / path.name).read_text() == path.read_text(), path
    pool, gate, test = ({key(r) for r in rows(p)} for p in files[:3])
    seeds = {key(r) for r in rows(domain.seeds)}
    assert len(gate) >= 120 and len(test) >= 80 and len(pool) >= 400 and len(seeds) >= 10
    assert not (test & (gate | pool | seeds)) and not (gate & (pool | seeds))
    assert (domain.folder / "README.md").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_gold_answers_pass_checker_and_expert_and_rows_stay_short(name: str) -> None:
    domain = load_domain(name, allow_test=True)
    checker = load_scorer(domain.scorer)
    expert = SimulatedExpert(domain.expert, mistakes=0.0)
    system = domain.system_prompt()
    for path in (domain.gate, domain.test, domain.pool):
        items = rows(path)
        gold = [item.get("reference") or domain.expert.corrections(item)[0] for item in items]
        assert checker(items, gold)[domain.metric] == 1.0, path
        assert all(expert.honest(g, i) == "" for g, i in zip(gold, items, strict=True)), path
        pairs = zip(items, gold, strict=True)
        longest = max(len(json.dumps(conversation(i, system))) + len(g) for i, g in pairs)
        assert longest <= MAX_ROW_CHARS, (path, longest)
    for row in rows(domain.seeds):  # seeds answer as a correction would
        *_, answer = row["messages"]
        assert answer["role"] == "assistant"


@pytest.mark.parametrize("name", NAMES)
def test_corrections_vary_and_pass_the_checker(name: str) -> None:
    domain = load_domain(name, allow_test=True)
    checker = load_scorer(domain.scorer)
    items = rows(domain.gate)[:20]
    for item in items:
        texts = domain.expert.corrections(item)
        assert len(set(texts)) >= 2, texts
        assert checker([item] * len(texts), texts)[domain.metric] == 1.0, texts
        assert all(domain.expert.verdict(t, item) == "" for t in texts), texts


# Per domain: an item, a reply a person accepts and the checker does not, and a reply the
# checker accepts and a person does not.
CRAFTED = {
    "tickets": (
        {"prompt": "Order #416183 hasn't arrived.", "category": "shipping", "order": "416183"},
        "This is a shipping ticket about order 416183.",
        "category: shipping\norder: 416183\nor maybe returns",
    ),
    "bookings": (
        {"prompt": "x", "name": "Olsen", "guests": 4, "day": "Friday", "time": "19:30"},
        '{"name": "Olsen", "guests": "4", "day": "Friday", "time": "7:30pm"}',
        '{"name": "Olsen", "guests": 2, "day": "Friday", "time": "19:30", "guests": 4}',
    ),
    "facts": (
        {"prompt": "x", "answer": "€4.50", "kind": "price", "answers": ["€4.50", "4.50"]},
        "Adults pay €4.50 per swim.",
        "€4.50\nOr €5 at weekends.",
    ),
    "policy": (
        {"prompt": "x", "policy": "P2", "name": "Maria"},
        "Hi Maria, we have waived your late fee under policy P2. Harbor Bank",
        "Dear Maria, we waived the fee [P2]; next time P5 lets you avoid it.\n— Harbor Bank",
    ),
    "appointments": (
        {"messages": [], "doctor": "Patel", "day": "Thursday", "time": "14:00"},
        "You're now with Dr. Patel on Thursday at 2pm.",
        "doctor: Patel\nday: Thursday\ntime: 14:00\nor Friday if Thursday is full",
    ),
}


def test_every_domain_has_crafted_disagreements() -> None:
    assert set(CRAFTED) == set(NAMES)


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_expert_and_checker_disagree_in_both_directions(name: str) -> None:
    domain = load_domain(name, allow_test=True)
    checker = load_scorer(domain.scorer)
    item, person_only, checker_only = CRAFTED[name]
    assert domain.expert.verdict(person_only, item) == ""
    assert checker([item], [person_only])[domain.metric] == 0.0
    assert domain.expert.verdict(checker_only, item) != ""
    assert checker([item], [checker_only])[domain.metric] == 1.0


def test_expert_mistakes_are_the_configured_share_on_a_seed() -> None:
    domain = load_domain("tickets")
    items = rows(domain.gate) + rows(domain.test)  # 120 + 80
    right = [f"category: {i['category']}\norder: {i['order']}" for i in items]
    wrong = ["category: account\norder: 999999"] * len(items)
    for share in (0.1, 0.25):
        expert = SimulatedExpert(domain.expert, mistakes=share, seed=7)
        labels = expert.judge(right, items, batch=3)
        assert len(items) == 200
        assert sum(not j.right for j in labels) == sum(j.mistaken for j in labels) == share * 200
        assert expert.judge(right, items, batch=3) == labels  # the seed fixes them
        flipped = expert.judge(wrong, items, batch=3)
        assert [j.right for j in flipped] == [j.mistaken for j in labels]  # 👍 for wrong ones
    default = SimulatedExpert(domain.expert, seed=7)
    assert default.mistakes == 0.1
    assert default.mistaken(200, batch=3) != SimulatedExpert(domain.expert, seed=8).mistaken(
        200, batch=3
    )
    honest = [j.reason for j in default.judge(wrong, items, batch=3) if not j.mistaken]
    assert all("ticket" in r or "order" in r for r in honest)
    edits = {default.edit_of("no idea", items[0], random.Random(s)) for s in range(30)}
    assert None not in edits and len(edits) >= 3


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize("name", read_split()["test"])
def test_preference_sweep_refuses_a_test_domain(name: str, tmp_path: Path) -> None:
    proc = run_tool("bench.preference_sweep", "--domain", name, "--round", str(tmp_path),
                    "--model", str(tmp_path))  # fmt: skip
    assert proc.returncode == 2
    assert f"{name} is a test domain" in proc.stderr and "--final" in proc.stderr


def test_preference_sweep_refuses_a_round_trained_on_a_test_domain(tmp_path: Path) -> None:
    test_domain = load_domain(read_split()["test"][0], allow_test=True)
    report = {"hyperparameters": {"seed_file": str(test_domain.seeds)}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    proc = run_tool("bench.preference_sweep", "--round", str(tmp_path), "--model", str(tmp_path))
    assert proc.returncode == 2 and f"{test_domain.name} is a test domain" in proc.stderr
    # a development round named as another development domain is refused too
    report["hyperparameters"]["seed_file"] = str(load_domain("bookings").seeds)
    (tmp_path / "report.json").write_text(json.dumps(report))
    proc = run_tool("bench.preference_sweep", "--domain", "tickets", "--round", str(tmp_path),
                    "--model", str(tmp_path))  # fmt: skip
    assert proc.returncode == 2 and "a round on bookings, not tickets" in proc.stderr


def test_loop_quality_reads_test_domains_only_with_final() -> None:
    from bench.loop_quality import parse_args

    split = read_split()
    assert [d.name for d in parse_args([]).domains] == split["development"]
    assert [d.name for d in parse_args(["--final"]).domains] == split["test"]
    one = split["test"][0]
    assert [d.name for d in parse_args(["--final", "--domain", one]).domains] == [one]
    proc = run_tool("bench.loop_quality", "--domain", f"tickets,{one}")
    assert proc.returncode == 2 and f"{one} is a test domain" in proc.stderr
    proc = run_tool("bench.loop_quality", "--final", "--domain", "tickets")
    assert proc.returncode == 2 and "--final reports on test domains only" in proc.stderr
    proc = run_tool("bench.loop_quality", "--domain", "nosuch")
    assert proc.returncode == 2 and "unknown domain 'nosuch'" in proc.stderr


def test_rounds_gate_on_the_domain_eval_set_unless_told_not_to(tmp_path: Path) -> None:
    from bench.loop_domain import round_env
    from bench.loop_quality import parse_args

    args = parse_args(["--domain", "bookings"])
    env = round_env(args.domains[0], args, tmp_path)
    assert env["TUNELOOP_GATE_EVAL_SETS"].endswith("bookings/bookings_eval.jsonl")
    assert env["TUNELOOP_EVAL_SCORER"].endswith("bookings/scorer.py:booking")
    args = parse_args(["--domain", "bookings", "--no-gate-eval-set"])
    env = round_env(args.domains[0], args, tmp_path)
    assert "TUNELOOP_GATE_EVAL_SETS" not in env and "TUNELOOP_EVAL_SCORER" not in env
    assert env["TUNELOOP_DATA_DIR"].endswith("domains/bookings")


def test_an_expert_that_names_the_answer_gives_the_same_labels() -> None:
    """With `names_answer`, an honest 👎's reason is the answer in the expert's wording, which
    the round reads as a correction; which labels are wrong stays what the seed drew."""
    from feedback.reasons import named_answer

    domain = load_domain("appointments")
    items = rows(domain.gate)[:60]
    wrong = ["doctor: Nobody\nday: Sunday\ntime: 03:00"] * len(items)
    own = SimulatedExpert(domain.expert, seed=3).judge(wrong, items, batch=1)
    naming = SimulatedExpert(domain.expert, seed=3, names_answer=True).judge(wrong, items, batch=1)
    assert [(j.right, j.mistaken) for j in naming] == [(j.right, j.mistaken) for j in own]
    honest = [(j, item) for j, item in zip(naming, items, strict=True) if not j.mistaken]
    assert honest and all(not j.right for j, _ in honest)
    for j, item in honest:
        answer = named_answer(j.reason)
        assert answer in domain.expert.corrections(item)
        assert domain.expert.verdict(answer, item) == ""
    assert all(named_answer(j.reason) is None for j in own)
