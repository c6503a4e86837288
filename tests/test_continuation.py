"""Rounds that build on each other (TUNELOOP_ROUND_MODE=continue) and on-policy pairs
(`tuneloop pairs generate --from ADAPTER --best-of N`), through the `tuneloop` command on
the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.test_round import ANSWERS, add_topic_rows

# New questions for the second round, in words the tiny tokenizer knows.
NEW_QUESTIONS = ["What do experts say about {t} in the evening?", "Please explain {t} quickly."]


def _lora(adapter: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _train(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> dict:
    code, out, err = run_cli(monkeypatch, capsys, "train", "--json", "--no-promote", *args)
    result = json.loads(out.strip().splitlines()[-1])
    assert code == (1 if result.get("status") == "failed" or "error" in result else 0), err
    return result


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_a_continue_round_starts_from_the_promoted_adapter_on_new_and_replayed_rows(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from app.config import Settings
    from feedback.records import NewExample
    from feedback.store import Store
    from training.registry import Registry

    domain = tmp_path / "domain"  # a system prompt only: no seeds, no replay to generate
    domain.mkdir()
    (domain / "system_prompt.md").write_text("You help with gardens and kitchens.\n")
    for key, value in {
        "TUNELOOP_DATA_DIR": str(domain),
        "TUNELOOP_MODEL": str(tiny_model_dir),
        "TUNELOOP_TRACKER": "none",
        "TUNELOOP_EVAL_GENERATE": "false",
        "TUNELOOP_HELDOUT_MIN_ITEMS": "0",  # the plain hash split: a row keeps its side
        "TUNELOOP_TRAIN_MAX_STEPS": "2",
        "TUNELOOP_TRAIN_BATCH_SIZE": "4",
        "TUNELOOP_SFT_LEARNING_RATE": "5e-3",
        "TUNELOOP_TRAIN_SAVE_STEPS": "100",
        "TUNELOOP_ROUND_MODE": "continue",
        "TUNELOOP_ROUND_REPLAY_SHARE": "0.5",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database)
    add_topic_rows(store)
    rounds = settings.rounds_dir

    # Continue asked for with nothing promoted yet: a fresh adapter, and the report says so.
    first = _train(monkeypatch, capsys)
    assert first["status"] != "failed", first
    cont = first["continuation"]
    assert (cont["requested"], cont["mode"], cont["parent"]) == ("continue", "fresh", None)
    assert "no promoted version" in cont["fallback"]
    older_sft = _lines(rounds / first["id"] / "data" / "sft_train.jsonl")
    assert cont["rows"]["sft_train"] == {"new": older_sft, "older": 0, "replayed": 0}
    assert "mode: fresh" in (rounds / first["id"] / "report.md").read_text()
    code, _, err = run_cli(monkeypatch, capsys, "promote", first["version"], "--force")
    assert code == 0, err
    parent = Registry(settings.adapters_dir).verify(first["version"])

    # New feedback arrives: corrected answers to new questions.
    store.add_bulk(
        examples=[
            NewExample(
                messages=[
                    {"role": "user", "content": q.format(t=topic)},
                    {"role": "assistant", "content": f"{answer} Thank you."},
                ]
            )
            for topic, answer in ANSWERS.items()
            for q in NEW_QUESTIONS
        ]
    )
    # A learning rate too small to move anything: the SFT adapter after one step still
    # holds the weights it started from.
    monkeypatch.setenv("TUNELOOP_SFT_LEARNING_RATE", "1e-9")
    second = _train(monkeypatch, capsys, "--sft-steps", "1")
    assert second["status"] != "failed", second
    cont = second["continuation"]
    assert (cont["mode"], cont["parent"], cont["fallback"]) == ("continue", first["version"], None)
    assert cont["parent_round"] == first["id"]
    folder = rounds / second["id"]
    all_sft = _lines(folder / "data" / "sft_train.jsonl")  # the full snapshot, saved as ever
    new_sft = all_sft - older_sft
    assert 0 < new_sft <= len(ANSWERS) * len(NEW_QUESTIONS)
    replayed = math.ceil(0.5 * older_sft)
    assert cont["rows"]["sft_train"] == {"new": new_sft, "older": older_sft, "replayed": replayed}
    older_dpo = _lines(rounds / first["id"] / "data" / "dpo_train.jsonl")
    assert cont["rows"]["dpo_train"] == {
        "new": 0,
        "older": older_dpo,
        "replayed": math.ceil(0.5 * older_dpo),
    }
    report = json.loads((folder / "report.json").read_text())
    assert report["snapshot"]["counts"]["sft_train"] == new_sft + replayed  # what trained
    assert f"mode: continue from {first['version']}: " in (folder / "report.md").read_text()
    info = Registry(settings.adapters_dir).info(second["version"])
    assert info["continuation"]["parent"] == first["version"]

    # The SFT stage started from the promoted adapter's weights (a fresh LoRA starts at B=0).
    started, promoted = _lora(folder / "sft" / "adapter"), _lora(parent)
    assert started.keys() == promoted.keys()
    assert max(promoted[k].abs().max().item() for k in promoted if "lora_B" in k) > 1e-4
    assert max((started[k] - promoted[k]).abs().max().item() for k in promoted) < 1e-6

    # `tuneloop rounds` names each round's mode and its rows.
    code, out, err = run_cli(monkeypatch, capsys, "rounds")
    assert code == 0, err
    assert f"continue from {first['version']}: {new_sft} new + " in out
    assert "fresh: " in out and "no promoted version" in out
    code, out, _ = run_cli(monkeypatch, capsys, "rounds", "--json")
    states = json.loads(out)["rounds"]
    assert [s["continuation"]["mode"] for s in states] == ["fresh", "continue"]

    # Nothing new since the promoted round: a continue round has nothing to do, and says so.
    code, _, err = run_cli(monkeypatch, capsys, "promote", second["version"], "--force")
    assert code == 0, err
    third = _train(monkeypatch, capsys)
    # a failed round under --json is one error object (app/cli/training.py)
    assert "failed: ContinuationError: nothing new to continue on" in third["error"], third


def test_continuation_plan_samples_older_rows_deterministically() -> None:
    from training.continuation import _sample, describe

    older = list(range(40))
    picked = _sample(older, 0.25, "42:r0002:sft_train")
    assert len(picked) == 10 and picked == sorted(picked) and set(picked) <= set(older)
    assert picked == _sample(older, 0.25, "42:r0002:sft_train")  # same seed, same rows
    assert picked != _sample(older, 0.25, "42:r0003:sft_train")  # each round its own draw
    assert _sample(older, 0.0, "s") == [] and len(_sample([3], 0.01, "s")) == 1
    assert _sample(older, 1.0, "s") == older
    line = describe({"mode": "continue", "parent": "v3", "new": 12, "replayed": 6, "older": 24})
    assert line == "continue from v3: 12 new + 6 of 24 older rows"


def test_continuation_plan_counts_rows_against_the_promoted_round(
    tmp_path: Path, tiny_adapters: dict[str, Path]
) -> None:
    from training.continuation import apply, plan
    from training.datasets import Snapshot, save_snapshot
    from training.registry import Registry

    def sft(text: str) -> dict:
        return {
            "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
        }

    rounds = tmp_path / "rounds"
    old = Snapshot([sft(f"old {i}") for i in range(8)], [], [sft("held out")], [])
    old.info = {"hash": "x"}
    save_snapshot(old, rounds / "r0001-20261201T000000")
    registry = Registry(tmp_path / "adapters")
    registry.register("v1", tiny_adapters["v1"])
    registry.update_info("v1", round="r0001-20261201T000000")
    now = Snapshot([sft("new 0"), *old.sft_train, sft("new 1"), sft("held out")], [], [], [])
    registry.set_current("v1")

    fresh = plan(now, mode="fresh", share=0.25, seed="s", registry=registry, rounds_dir=rounds)
    assert fresh["mode"] == "fresh" and fresh["parent"] is None
    # "held out" was not trained on by v1: it counts as new.
    assert fresh["rows"]["sft_train"] == {"new": 3, "older": 8, "replayed": 8}
    assert fresh["selected"]["sft_train"] == list(range(11))

    cont = plan(now, mode="continue", share=0.25, seed="s", registry=registry, rounds_dir=rounds)
    assert (cont["mode"], cont["parent"], cont["fallback"]) == ("continue", "v1", None)
    assert cont["rows"]["sft_train"] == {"new": 3, "older": 8, "replayed": 2}
    chosen = cont["selected"]["sft_train"]
    assert {0, 9, 10} <= set(chosen) and len(chosen) == 5 and chosen == sorted(chosen)

    # The plan is kept with the round: a resumed round trains on the same rows from the
    # same parent, whatever CURRENT says by then.
    folder = rounds / "r0002-20261201T010000"
    folder.mkdir()
    kept = apply(now, folder, mode="continue", share=0.25, seed=42, registry=registry)
    assert kept.info["continuation"]["parent"] == "v1" and len(kept.sft_train) == 5
    registry.set_current(None)
    again = apply(now, folder, mode="fresh", share=1.0, seed=7, registry=registry)
    assert again.sft_train == kept.sft_train and again.info == kept.info
    registry.set_current("v1")

    registry.update_info("v1", round="r0009-20261201T000000")  # its round folder is gone
    gone = plan(now, mode="continue", share=0.25, seed="s", registry=registry, rounds_dir=rounds)
    assert gone["mode"] == "fresh" and "no round snapshot" in gone["fallback"]
    assert gone["rows"]["sft_train"] == {"new": 11, "older": 0, "replayed": 0}


SCORER = '''
def ords(rows, replies):
    """A score every distinct reply gets its own of; rows marked "flat" score all alike."""
    if rows[0].get("flat"):
        return {"score": 1.0}
    return {"score": float(sum(map(ord, replies[0])))}
'''


def _best_of_home(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A home serving tiny adapter v1 that samples differing 8-token replies, a domain of
    one system prompt, and the SCORER file (returned)."""
    from tests.tiny import tiny_registry

    domain = tmp_path / "domain"
    domain.mkdir()
    (domain / "system_prompt.md").write_text("You help with gardens and kitchens.\n")
    scorer = tmp_path / "scorer.py"
    scorer.write_text(SCORER)
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(domain))
    monkeypatch.setenv("TUNELOOP_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("TUNELOOP_TEMPERATURE", "1.5")  # samples that differ
    registry = tiny_registry(
        monkeypatch, tmp_path / "home", tiny_model_dir, tiny_adapters, max_new_tokens=8
    )
    registry.set_current("v1")
    return scorer


def test_pairs_generate_best_of_queues_the_best_and_worst_sample_and_skips_ties(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from app.config import Settings
    from feedback.store import Store

    scorer = _best_of_home(tmp_path, tiny_model_dir, tiny_adapters, monkeypatch)
    monkeypatch.setenv("TUNELOOP_EVAL_SCORER", f"{scorer}:ords")  # the configured scorer
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": f"How do I care for {t}?"} for t in ("tomatoes", "bread", "soup", "a spider")
    ]
    rows += [{"prompt": "Will it rain?", "flat": True}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    code, out, err = run_cli(
        monkeypatch, capsys, "pairs", "generate", "--prompts", str(prompts),
        "--from", "CURRENT", "--best-of", "3", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert (result["prompts"], result["from"], result["best_of"]) == (5, "v1", 3)
    assert result["scorers"] == [f"{scorer}:ords"]
    items = result["items"]
    assert all(len(i["replies"]) == len(i["scores"]) == 3 for i in items)
    for item in items[:4]:  # the scores are the configured scorer's, reply by reply
        expected = [float(sum(map(ord, r))) if r.strip() else None for r in item["replies"]]
        assert item["scores"] == expected
    flat = items[4]
    assert flat["skipped"] == "tie" and not flat["queued"] and flat["best"] is None
    assert result["ties"] >= 1
    paired = [i for i in items if i["best"] is not None]
    assert paired and result["pairs"] == len(paired) == result["queued"]
    for item in paired:
        scored = [s for s in item["scores"] if s is not None]
        assert item["best_score"] == max(scored) > item["worst_score"] == min(scored)

    settings = Settings()
    queued = Store.open(settings.database).pending_pairs(limit=100)
    assert len(queued) == len(paired)
    by_first = {q.first: q for q in queued}
    for item in paired:
        pair = by_first[item["replies"][item["best"]]]
        assert pair.second == item["replies"][item["worst"]]
        meta = json.loads(pair.metadata_json)
        assert (meta["score_first"], meta["score_second"]) == (
            item["best_score"],
            item["worst_score"],
        )
        assert meta["best_of"] == 3 and meta["adapter_first"] == meta["adapter_second"] == "v1"
        assert json.loads(pair.prompt_json)[0]["role"] == "system"

    # A scorer that compares two adapters cannot rank one adapter's samples: one line, no pair.
    code, out, err = run_cli(
        monkeypatch, capsys, "pairs", "generate", "--prompts", str(prompts),
        "--best-of", "3", "--scorer", "pairwise",
    )  # fmt: skip
    assert code == 1 and err.count("\n") == 1
    assert "compares two adapters" in err
    code, _, err = run_cli(
        monkeypatch, capsys, "pairs", "generate", "--prompts", str(prompts), "--best-of", "1"
    )
    assert code == 1 and "at least 2" in err
    assert len(Store.open(settings.database).pending_pairs(limit=100)) == len(paired)


def test_best_of_ranks_samples_by_the_demo_rubric_and_finds_ties() -> None:
    from app.config import REPO_DATA_DIR
    from training.eval.best_of import choose, pick_pairs
    from training.eval.scorers import resolve_scorers

    row = {"prompt": "Hi, I'm Lena. Is there an outage?", "customer": "Lena", "policy": "POL-3"}
    scorers = resolve_scorers("auto", [row], rubric_path=REPO_DATA_DIR / "rubric.json")
    assert [s.name for s in scorers] == ["rubric"]
    good = "Hi Lena, there is an outage; POL-3 gives you a credit.\n— Brightwater Support"
    wrong = "Hi Lena, see POL-7.\n— Brightwater Support"
    bare = "No idea."
    conversation = [{"role": "user", "content": row["prompt"]}]
    picked = pick_pairs(
        [row, row], [conversation] * 2, [[wrong, good, bare], [bare, bare, ""]], scorers
    )
    first, second = picked
    assert (first.replies[first.best], first.replies[first.worst]) == (good, bare)
    assert first.scores[1] == 1.0 and first.scores[1] > first.scores[0] > first.scores[2]
    assert second.why_not == "tie" and second.scores[2] is None  # an empty reply takes no part
    assert choose(["a", "b"], [0.5, None]) == "unscored"


def test_best_of_pairs_sent_to_the_round_train_as_a_source_of_their_own(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from app.config import Settings
    from feedback.store import Store

    scorer = _best_of_home(tmp_path, tiny_model_dir, tiny_adapters, monkeypatch)
    for key, value in {
        "TUNELOOP_TRACKER": "none",
        "TUNELOOP_EVAL_GENERATE": "false",
        "TUNELOOP_HELDOUT_MIN_ITEMS": "0",
        "TUNELOOP_TRAIN_MAX_STEPS": "1",
        "TUNELOOP_TRAIN_BATCH_SIZE": "4",
        "TUNELOOP_TRAIN_SAVE_STEPS": "100",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    store = Store.open(settings.database)
    add_topic_rows(store)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"How do I care for {t}?\n" for t in ("tomatoes", "bread", "soup")))

    code, out, err = run_cli(
        monkeypatch, capsys, "pairs", "generate", "--prompts", str(prompts),
        "--from", "CURRENT", "--best-of", "3", "--scorer", f"{scorer}:ords", "--to", "round",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["to"] == "round" and result["pairs"] == result["queued"] == 3
    # The scorers' pick is the label: stored as pairs, nothing waits for annotators.
    assert store.pending_pairs(limit=100) == []
    code, out, err = run_cli(monkeypatch, capsys, "status", "--json")
    assert code == 0, err
    assert json.loads(out)["counts"]["preferences_by_source"]["best-of"] == 3
    best = {i["replies"][i["best"]]: i["replies"][i["worst"]] for i in result["items"]}

    done = _train(monkeypatch, capsys)
    assert done["status"] != "failed", done
    folder = settings.rounds_dir / done["id"]
    sources = json.loads((folder / "snapshot.json").read_text())["train_sources"]["dpo"]
    rows = [json.loads(line) for line in (folder / "data" / "dpo_train.jsonl").open()]
    trained = [
        r for r in rows if best.get(r["chosen"][0]["content"]) == r["rejected"][0]["content"]
    ]
    assert sources == {"best-of": len(trained), "import": len(rows) - len(trained)}
    assert len(trained) >= 1 and "source" not in rows[0]

    # --to names where the pairs go, and goes only with --best-of.
    code, _, err = run_cli(
        monkeypatch, capsys, "pairs", "generate", "--prompts", str(prompts), "--best-of", "3",
        "--to", "annotators",
    )  # fmt: skip
    assert code == 1 and "'argilla'" in err and "'round'" in err
    code, _, err = run_cli(
        monkeypatch, capsys, "pairs", "generate", "--prompts", str(prompts), "--to", "round"
    )
    assert code == 1 and "go with --best-of" in err
