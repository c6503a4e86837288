"""A training round on the tiny model: SFT, DPO, evaluation, gate, promotion, rollback,
failures that must not promote, resume, the held-out split, and the trainer configs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.main import app
from app.config import REPO_DATA_DIR, Settings
from feedback.records import NewExample, NewPreference
from feedback.store import Store
from tests.cli import run_cli
from tests.configs import round_config
from tests.tiny import differs_gate
from training.eval.evaluate import EvalSettings
from training.gate import GateConfig, parse_margins
from training.registry import Registry, RegistryError
from training.round import run_round
from training.round_config import RoundConfig
from training.rounds_dir import RoundBusyError, list_rounds
from training.trainer_args import dpo_config, sft_config

# Words the tiny tokenizer knows; one reply per topic, five ways of asking. 2 of the 30
# prompts fall in the held-out split.
ANSWERS = {
    "tomatoes": "Tomatoes like deep water twice a week and a little mulch to keep the soil cool.",
    "bread": "Flour, water, salt and yeast make a simple loaf; let the dough rest until doubled.",
    "a bicycle chain": "A bicycle chain needs a drop of oil every month; wipe off the extra oil.",
    "soup": "Chop an onion, two carrots and a potato, then cook them in stock for twenty minutes.",
    "a spider": "A spider has eight legs.",
    "the weather": "If the sky is grey and the wind turns cold, rain is likely before the evening.",
}
QUESTIONS = [
    "How do I care for {t}?",
    "What should I know about {t}?",
    "Tell me about {t}, please.",
    "Is {t} hard for a beginner?",
    "Any quick tips on {t}?",
]
runner = CliRunner()
# The round mechanics on 2 held-out items: the gate's statistics are tested on their own
# (tests/test_gate.py) and through the entry points with eval sets (tests/test_gate_entry.py).
MECHANICS = GateConfig(
    margins=parse_margins("pref_acc=-1,heldout_loss=0,general_loss=-1,general_pass=-1"),
    min_items=2,
)
# A margin no candidate can meet (an objective 99 nats better on the held-out loss): every
# stage is rejected, for tests whose subject is not the gate's verdict.
NEVER = GateConfig(margins=parse_margins("heldout_loss=99"), min_items=2)


@pytest.fixture
def settings(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_TRACKER", "none")
    s = Settings()
    s.home.mkdir(parents=True, exist_ok=True)
    return s


def add_topic_rows(store: Store) -> None:
    """Every QUESTIONS x ANSWERS prompt as an SFT example and a pair against a non-answer."""
    prefs, examples = [], []
    for topic, answer in ANSWERS.items():
        for question in QUESTIONS:
            prompt = [{"role": "user", "content": question.format(t=topic)}]
            prefs.append(NewPreference(prompt=prompt, chosen=answer, rejected="No idea, sorry."))
            examples.append(
                NewExample(messages=[*prompt, {"role": "assistant", "content": answer}])
            )
    store.add_bulk(preferences=prefs, examples=examples)


@pytest.fixture
def store(settings: Settings) -> Store:
    store = Store.open(settings.database)
    add_topic_rows(store)
    return store


def _config(**overrides: object) -> RoundConfig:
    """The round users get, except: a few steps of a few rows (the fast tier), a learning
    rate that moves the tiny random model in those steps, a checkpoint every step (resume
    is tested), a system prompt in the tiny tokenizer's words, a small evaluation, the
    MECHANICS gate, no seed or replay file (the demo domain's rows are not what these tests
    check; the replay test names its own), and the plain 10% held-out split: the 30 prompts
    here share 6 answers, a held-out answer is kept out of training, and the product's
    20-item minimum (a third of 30 here) would leave next to nothing to train on."""
    values: dict = {
        "sft_steps": 4,
        "dpo_steps": 4,
        "batch_size": 4,
        "sft_learning_rate": 5e-3,
        "dpo_learning_rate": 5e-3,
        "save_steps": 1,
        "system_prompt": "You help with gardens and kitchens.",
        "eval": EvalSettings(
            max_prompts=3,
            max_new_tokens=6,
            rubric_file=REPO_DATA_DIR / "rubric.json",
            general_file=REPO_DATA_DIR / "general_checks.jsonl",
        ),
        "gate": MECHANICS,
        "seed_file": None,
        "replay_file": None,
        "heldout_min_items": 0,
    }
    values.update(overrides)
    return round_config(**values)


def _run(settings: Settings, store: Store, model_dir: Path, **kwargs: object):
    return run_round(
        store=store,
        registry=Registry(settings.adapters_dir),
        model_dir=model_dir,
        rounds_dir=settings.rounds_dir,
        **{"config": _config(), **kwargs},  # type: ignore[arg-type]
    )


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def test_round_end_to_end_promotes_then_rolls_back(
    settings: Settings, store: Store, tiny_model_dir: Path, tmp_path: Path
) -> None:
    base_before = _tree_digest(tiny_model_dir)
    seen: list[dict] = []
    # The feedback's own held-out metrics never promote: an eval set any trained adapter
    # wins on stands in for a real objective, so that the round has one to promote on.
    margins = "pref_acc=-1,heldout_loss=0,general_loss=-1,general_pass=-1"
    gate = differs_gate(tiny_model_dir, tmp_path / "gate", _config().system_prompt,
                        margins=margins, min_items=2)  # fmt: skip
    result = _run(settings, store, tiny_model_dir, on_progress=seen.append,
                  config=_config(gate=gate))  # fmt: skip

    assert result.status == "promoted", result.reasons
    registry = Registry(settings.adapters_dir)
    assert registry.current() == result.version
    registry.verify(result.version)
    folder = settings.rounds_dir / result.id
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == "promoted" and state["stage"] == "done"
    assert {s["stage"] for s in seen} >= {"snapshot", "sft", "dpo", "evaluate", "gate", "done"}
    for name in ("report.json", "report.md", "loss.png", "history.png", "snapshot.json"):
        assert (folder / name).is_file(), name
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert {(m["stage"], m["step"]) for m in logged} >= {("sft", 4), ("dpo", 4)}
    # 4 DPO steps of 4 pairs train on 16 of the pairs: only those get reference log-probs
    counts = json.loads((folder / "snapshot.json").read_text())["counts"]
    assert counts["dpo_train"] > 16
    assert [m["train_rows"] for m in logged if "train_rows" in m] == [16]

    # The LoRA weights moved away from their initialisation (B starts at zero), DPO moved
    # them again, and no base weight was touched: the adapters hold only LoRA tensors and
    # the model files are byte for byte what they were.
    sft = _tensors(folder / "sft" / "adapter")
    dpo = _tensors(folder / "dpo" / "adapter")
    assert all("lora_" in key for key in [*sft, *dpo])
    assert all(t.abs().sum() > 0 for k, t in sft.items() if "lora_B" in k)
    assert any(not sft[k].equal(dpo[k]) for k in sft)
    assert _tree_digest(tiny_model_dir) == base_before

    # Registry metadata, metrics and the gate's comparison.
    info = registry.info(result.version)
    snapshot = json.loads((folder / "snapshot.json").read_text())
    assert info["status"] == "promoted" and info["snapshot_hash"] == snapshot["hash"]
    assert info["row_counts"]["dpo_train"] > 0 and info["hyperparameters"]["lora_r"] == 16
    assert info["base_model"] and info["code_version"]
    for key in ("pref_acc", "heldout_loss", "general_loss", "rubric_pass", "general_pass"):
        assert key in info["metrics"], key
    assert result.metrics["serving"]["pref_acc"] == 0.5  # the bare base: every pair a tie
    assert snapshot["preference_ids"] and snapshot["max_ids"]["preferences"] == 30

    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["adapter"] == result.version and status["last_round"]["id"] == result.id
    assert status["adapter_metrics"]["heldout_loss"] == info["metrics"]["heldout_loss"]
    listed = json.loads(runner.invoke(app, ["rounds", "--json"]).stdout)
    assert [r["id"] for r in listed["rounds"]] == [result.id]
    assert listed["new_feedback"]["preferences"] == 0

    out = runner.invoke(app, ["rollback", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"from": result.version, "to": None}
    assert registry.current() is None
    out = runner.invoke(app, ["promote", result.version, "--json"])
    assert out.exit_code == 0 and registry.current() == result.version

    # A corrupted adapter is refused before it can be served.
    weights = registry.path(result.version) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="corrupted"):
        registry.verify(result.version)
    registry.set_current(None)
    out = runner.invoke(app, ["promote", result.version])
    assert out.exit_code != 0 and registry.current() is None


def _nan_model(src: Path, dest: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return dest


def test_nan_loss_fails_the_round_and_keeps_serving(
    settings: Settings,
    store: Store,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    registry = Registry(settings.adapters_dir)
    registry.register("v1", tiny_adapters["v1"])
    registry.set_current("v1")
    result = _run(settings, store, _nan_model(tiny_model_dir, tmp_path / "nan"))
    assert result.status == "failed"
    assert "NonFiniteLossError" in result.reasons[0] and "is nan" in result.reasons[0]
    assert registry.current() == "v1" and registry.versions() == ["v1"]
    assert list_rounds(settings.rounds_dir)[-1]["status"] == "failed"


def test_exception_mid_dpo_promotes_nothing_and_resume_finishes(
    settings: Settings, store: Store, tiny_model_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    registry = Registry(settings.adapters_dir)
    registry.register("v1", tiny_adapters["v1"])
    registry.set_current("v1")

    def crash(state: dict) -> None:
        if state["stage"] == "dpo" and state["step"] == 2:
            raise RuntimeError("disk on fire")

    # Reference log-probs per step here (the other test covers the precomputed default).
    config = _config(precompute_ref_log_probs=False)
    first = _run(settings, store, tiny_model_dir, on_progress=crash, config=config)
    assert first.status == "failed" and "disk on fire" in first.reasons[0]
    assert registry.current() == "v1" and registry.versions() == ["v1"]
    folder = settings.rounds_dir / first.id
    assert (folder / "sft" / "adapter" / "adapter_config.json").is_file()
    assert (folder / "dpo" / "checkpoints" / "checkpoint-1").is_dir()

    # A margin no candidate can meet: the resumed round must be rejected, not promoted, and
    # the reasons name the metric that stopped each stage.
    strict = _config(precompute_ref_log_probs=False, gate=NEVER)
    again = _run(settings, store, tiny_model_dir, resume=True, config=strict)
    assert again.id == first.id
    assert again.status == "rejected" and again.decision == "reject"
    for stage in ("sft", "dpo"):
        assert any(r.startswith(f"{stage} reject: heldout_loss ") for r in again.reasons)
    report = (folder / "report.md").read_text()
    assert "## Gate: dpo vs serving — reject" in report and "[95% interval]" in report
    assert registry.current() == "v1"
    assert registry.info(again.version)["status"] == "rejected"
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    sft_steps = [m["step"] for m in logged if m["stage"] == "sft" and "loss" in m]
    dpo_steps = [m["step"] for m in logged if m["stage"] == "dpo" and "loss" in m]
    assert sft_steps == [1, 2, 3, 4]  # SFT was not run again
    assert dpo_steps == [1, 2, 2, 3, 4]  # DPO went on from checkpoint-1


def test_heldout_prompts_never_reach_training(settings: Settings, store: Store) -> None:
    from training.datasets import take_snapshot

    # A near copy of a held-out prompt, added as a training candidate, must be dropped too.
    heldout = list(store.dpo_rows("heldout"))
    assert heldout, "the fixture data must put at least one pair in the held-out split"
    near = heldout[0]["prompt"][0]["content"].replace("?", " ?")
    store.add_bulk(
        examples=[NewExample(messages=[{"role": "user", "content": near},
                                       {"role": "assistant", "content": "A near copy."}])]
    )  # fmt: skip
    snap = take_snapshot(store, seed_file=REPO_DATA_DIR / "seed_sft.jsonl")
    held_texts = {
        m["content"].strip()
        for row in [*snap.sft_heldout, *snap.dpo_heldout]
        for m in (row.get("prompt") or row["messages"][:-1])
        if m["role"] == "user"
    }
    assert held_texts
    train_text = json.dumps([*snap.sft_train, *snap.dpo_train])
    for text in held_texts:
        assert json.dumps(text)[1:-1] not in train_text
    assert "A near copy." not in train_text
    assert snap.info["curation"]["near_heldout"] >= 1
    assert snap.info["seed_rows"] == 6


def test_one_round_at_a_time_and_a_crashed_lock_is_free(
    settings: Settings, store: Store, tiny_model_dir: Path
) -> None:
    from training.rounds_dir import exclusive_lock

    rounds = settings.rounds_dir
    with exclusive_lock(rounds), pytest.raises(RoundBusyError):
        _run(settings, store, tiny_model_dir)
    # A process that dies holding the lock leaves nothing stuck: the OS drops its flock.
    code = (
        "import os, sys; from filelock import FileLock; "
        "FileLock(sys.argv[1]).acquire(); os._exit(3)"
    )
    assert subprocess.run([sys.executable, "-c", code, str(rounds / ".lock")]).returncode == 3
    with exclusive_lock(rounds):
        pass
    # A round killed mid-way (state still "running", lock free) is reported as failed.
    killed = rounds / "r0001-20261122T093000"
    killed.mkdir()
    (killed / "state.json").write_text(json.dumps({"id": killed.name, "status": "running"}))
    with exclusive_lock(rounds):
        assert list_rounds(rounds)[-1]["status"] == "running"
    assert list_rounds(rounds)[-1]["status"] == "failed"
    assert "interrupted" in list_rounds(rounds)[-1]["reason"]


def test_configs_from_default_settings_are_valid_for_installed_trl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.gate import DEFAULT_MARGINS

    config = RoundConfig.from_settings(Settings())
    assert config.gate.margins == parse_margins(DEFAULT_MARGINS) and not config.gate.eval_sets
    sft = sft_config(config, tmp_path / "sft", 10, tmp_path)
    dpo = dpo_config(config, tmp_path / "dpo", 10, tmp_path)
    assert sft.completion_only_loss and not sft.gradient_checkpointing
    assert sft.max_length == dpo.max_length == config.max_length
    assert dpo.precompute_ref_log_probs and dpo.beta == config.dpo_beta
    assert dpo.loss_type == ["sigmoid", "sft"] and dpo.loss_weights == [1.0, 1.0]
    assert sft.learning_rate == config.sft_learning_rate and sft.max_steps == 10
    assert config.seed_file is not None and config.seed_file.is_file()
    assert config.eval.rubric_file is not None and config.eval.rubric_file.is_file()
    from training.lora import lora_config

    lora = lora_config(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
    assert lora.r == 16 and lora.target_modules == "all-linear"

    # Every setting reaches the round by name, the gate's eval sets and rubric included.
    rubric = tmp_path / "rubric.json"
    monkeypatch.setenv("TUNELOOP_EVAL_RUBRIC", str(rubric))
    monkeypatch.setenv("TUNELOOP_GATE_EVAL_SETS", f"{tmp_path}/a.jsonl, {tmp_path}/b.jsonl")
    monkeypatch.setenv("TUNELOOP_GATE_MARGINS", "a:exact=0.1")
    monkeypatch.setenv("TUNELOOP_TRAIN_SEED", "7")
    monkeypatch.setenv("TUNELOOP_DPO_BETA", "0.3")
    monkeypatch.setenv("TUNELOOP_DPO_LOSS_TYPE", "robust")
    monkeypatch.setenv("TUNELOOP_DPO_LABEL_SMOOTHING", "0.1")
    monkeypatch.setenv("TUNELOOP_DPO_SFT_WEIGHT", "0")  # the preference loss alone
    config = RoundConfig.from_settings(Settings(), max_steps=3, sft_steps=None)
    assert config.eval.rubric_file == rubric and config.gate.rubric_file == rubric
    assert config.gate.eval_sets == (tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert config.gate.margins == {"a:exact": 0.1}
    assert (config.seed, config.dpo_beta, config.max_steps, config.sft_steps) == (7, 0.3, 3, 0)
    dpo = dpo_config(config, tmp_path / "dpo", 10, tmp_path)
    assert dpo.loss_type == ["robust"] and dpo.loss_weights is None and dpo.label_smoothing == 0.1
    monkeypatch.setenv("TUNELOOP_DPO_SFT_WEIGHT", "2.5")
    config = RoundConfig.from_settings(Settings())
    dpo = dpo_config(config, tmp_path / "dpo", 10, tmp_path)
    assert dpo.loss_type == ["robust", "sft"] and dpo.loss_weights == [1.0, 2.5]
    monkeypatch.setenv("TUNELOOP_DPO_LOSS_TYPE", "kto")  # not a DPO loss we offer
    with pytest.raises(ValueError, match="dpo_loss_type"):
        Settings()


def test_sft_trains_only_the_final_reply_of_a_conversation(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A correction on the second reply of a chat: TRL's own tokenization of the round's SFT
    rows puts only that reply (and its end token) in the loss, never the earlier model turn."""
    from datasets import Dataset
    from trl import SFTTrainer

    from training.datasets import final_turn_rows
    from training.models import load_base, load_tokenizer

    conv = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": "Bread?"},
        {"role": "assistant", "content": "Flour and water."},
    ]
    config = _config()
    tok = load_tokenizer(tiny_model_dir)
    trainer = SFTTrainer(
        model=load_base(tiny_model_dir, config),
        args=sft_config(config, tmp_path / "sft", 1, tmp_path),
        train_dataset=Dataset.from_list(final_turn_rows([{"messages": conv}])),
        processing_class=tok,
    )
    row = trainer.train_dataset[0]
    trained = [i for i in row["labels"] if i != -100]  # what the loss sees
    text = tok.decode(trained).strip()
    assert text.startswith("Flour and water.<|im_end|>") and "Hi there" not in text
    assert (
        row["input_ids"]
        == tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    )  # the whole chat is there as context


def test_a_dpo_stage_trained_on_flipped_pairs_never_ships(
    settings: Settings, tiny_model_dir: Path
) -> None:
    """Every pair's labels flipped (the canned refusal "chosen"), the imported answers
    right. The DPO stage looks better on the flipped held-out pairs (`pref_acc`): that is
    the feedback grading itself, and it cannot promote. With no eval set and replies that
    cannot be told apart on 2 held-out prompts, nothing ships, and each stage's decision
    says the objective was not shown better."""
    store = Store.open(settings.database)
    prefs, examples = [], []
    for topic, answer in ANSWERS.items():
        for k, question in enumerate(QUESTIONS):
            prompt = [{"role": "user", "content": question.format(t=topic)}]
            # answers differ per prompt: the split keeps a repeated held-out answer out of training
            right, wrong = f"{answer} ({k})", f"No idea, sorry ({topic} {k})."
            prefs.append(NewPreference(prompt=prompt, chosen=wrong, rejected=right))
            examples.append(NewExample(messages=[*prompt, {"role": "assistant", "content": right}]))
    store.add_bulk(preferences=prefs, examples=examples)
    config = _config(dpo_learning_rate=5e-2, dpo_steps=6)
    result = _run(settings, store, tiny_model_dir, config=config)
    assert result.status != "promoted" and Registry(settings.adapters_dir).current() is None
    assert set(result.gate) == {"sft", "dpo"} and result.objectives == ["reply_match"]
    dpo = {c["name"]: c for c in result.gate["dpo"]["comparisons"]}
    assert dpo["pref_acc"]["role"] == "soft guard" and dpo["pref_acc"]["diff"] > 0
    assert result.gate["dpo"]["decision"] != "promote"
    assert any(r.startswith("dpo ") and "reply_match" in r for r in result.reasons), result.reasons
    info = Registry(settings.adapters_dir).info(result.version or "")
    assert info["decision"] != "promote" and set(info["gate"]) == {"sft", "dpo"}


def test_rollback_walks_back_through_what_served(
    settings: Settings, tiny_adapters: dict[str, Path]
) -> None:
    registry = Registry(settings.adapters_dir)
    for name in ("v1", "v2"):
        registry.register(name, tiny_adapters[name])
    assert runner.invoke(app, ["rollback"]).exit_code == 1  # the pointer never moved
    registry.set_current("v1")
    registry.set_current("v2")
    out = runner.invoke(app, ["rollback", "--json"])
    assert json.loads(out.stdout) == {"from": "v2", "to": "v1"}
    assert registry.info("v2")["status"] == "rolled_back"
    out = runner.invoke(app, ["rollback", "--json"])  # not back to v2: it was rolled back
    assert json.loads(out.stdout) == {"from": "v1", "to": None}
    assert registry.current() is None


def test_train_resume_with_nothing_to_resume_says_so(settings: Settings, store: Store) -> None:
    out = runner.invoke(app, ["train", "--resume", "--json"])
    assert out.exit_code == 1
    assert "no failed or interrupted round to resume" in str(out.exception)


def test_rows_too_long_to_train_fail_the_round_clearly(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training length the prompts alone fill: TRL would cut every reply away and fail
    without a reason; the round says what to change and serves what it served."""
    monkeypatch.setenv("TUNELOOP_TRAIN_MAX_LENGTH", "32")
    out = runner.invoke(app, ["train", "--json"])
    assert out.exit_code == 1, out.output
    (round_,) = list_rounds(settings.rounds_dir)
    assert round_["status"] == "failed"
    reason = round_["reason"]
    assert reason.startswith("RowsTooLongError: sft: the prompt of every one of its"), reason
    assert "TUNELOOP_TRAIN_MAX_LENGTH" in reason
    assert Registry(settings.adapters_dir).current() is None
    # with --json, a failed round is an error like any command's, not the round record
    assert json.loads(out.stdout) == {
        "error": f"round {round_['id']} failed: {reason}",
        "exit_code": 1,
    }


def test_a_failed_train_json_is_one_error_object_and_no_traceback(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """As its own process: stdout holds the error object alone, stderr no traceback
    (the log file keeps it); TUNELOOP_DEBUG=1 shows the traceback on stderr."""
    env = {**os.environ, "TUNELOOP_TRAIN_MAX_LENGTH": "32"}
    argv = [sys.executable, "-m", "app.cli", "train", "--json"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = proc.stdout.splitlines()
    body = json.loads(line)
    assert set(body) == {"error", "exit_code"} and body["exit_code"] == 1
    assert "RowsTooLongError" in body["error"]
    assert "Traceback" not in proc.stderr and "RowsTooLongError" in proc.stderr
    assert "Traceback" in (settings.home / "logs" / "tuneloop.log").read_text()
    # The same entry point in-process (the process's own streams are shown above).
    monkeypatch.setenv("TUNELOOP_TRAIN_MAX_LENGTH", "32")
    monkeypatch.setenv("TUNELOOP_DEBUG", "1")
    code, _, err = run_cli(monkeypatch, capsys, "train", "--json")
    assert code == 1 and "Traceback" in err and "RowsTooLongError" in err


def test_rows_whose_prompt_fills_the_length_are_left_out(tiny_model_dir: Path, caplog) -> None:
    from training.models import load_tokenizer
    from training.stages import RowsTooLongError, fitting_rows

    tok = load_tokenizer(tiny_model_dir)
    short = {"prompt": [{"role": "user", "content": "Any quick tips on soup?"}]}
    long = {"prompt": [{"role": "user", "content": "Tell me about bread, please. " * 20}]}
    with caplog.at_level("WARNING", logger="training.stages"):
        kept = fitting_rows([short, long, short], tok, 128, "dpo", lambda r: r["prompt"])
    assert kept == [short, short]
    assert "dpo: 1 of 3 rows left out" in caplog.text
    with pytest.raises(RowsTooLongError, match="dpo: the prompt of every one of its 1 rows"):
        fitting_rows([long], tok, 128, "dpo", lambda r: r["prompt"])


@pytest.fixture
def ending_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with every third token id ending a turn, so its greedy replies end
    after a few tokens (the random tiny model alone never ends one)."""
    import shutil

    dest = tmp_path / "ending"
    shutil.copytree(tiny_model_dir, dest)
    config_file = dest / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    vocab = json.loads((dest / "config.json").read_text())["vocab_size"]
    config["eos_token_id"] = list(range(0, vocab, 3))
    config_file.write_text(json.dumps(config))
    return dest


def test_replay_answers_come_from_the_bare_base_and_join_sft_only(
    settings: Settings, store: Store, ending_model_dir: Path
) -> None:
    """The replay prompts are answered by the bare base model (greedy, as `generate` would)
    and trained on as SFT rows, never split off as held-out; a resumed round keeps them."""
    from training.datasets import load_snapshot, replay_rows
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.prompt_files import row_conversation

    replay_file = REPO_DATA_DIR / "replay_prompts.jsonl"
    system = "You help with gardens and kitchens."
    config = _config(
        replay_file=replay_file,
        dpo_steps=1,
        replay_max_new_tokens=2,
        infer_bf16=False,
        gate=NEVER,  # the replay rows are the subject, not the verdict
    )
    result = _run(settings, store, ending_model_dir, config=config, promote=False)
    assert result.status == "rejected", result.reasons
    snap = load_snapshot(settings.rounds_dir / result.id)
    prompts = [json.loads(x)["prompt"] for x in replay_file.read_text().splitlines() if x]
    assert len(prompts) >= 20
    replayed = [r for r in snap.sft_train if r["messages"][1]["content"] in prompts]
    assert len(replayed) == snap.info["replay_rows"] > 0
    assert all(r["messages"][0] == {"role": "system", "content": system} for r in replayed)
    held = json.dumps([*snap.sft_heldout, *snap.dpo_heldout])
    assert not any(json.dumps(p)[1:-1] in held for p in prompts)

    # The answers are the base model's own greedy replies to exactly those conversations;
    # those the 2-token budget cut off were generated again with 4x the budget, and any
    # still cut off were dropped: every replayed answer is one the model ended itself.
    model, tok = load_for_generation(ending_model_dir, bf16=False)  # as the round answers
    convs = [row_conversation({"prompt": p}, system) for p in prompts]
    cut: set[int] = set()
    short = generate_replies(model, tok, convs, max_new_tokens=2, cut_off=cut)
    assert cut and len(cut) < len(prompts)  # some ended within 2 tokens, some did not
    still: set[int] = set()
    longer = generate_replies(model, tok, convs, max_new_tokens=8, cut_off=still)
    by_prompt = {r["messages"][1]["content"]: r["messages"][2]["content"] for r in replayed}
    for i, prompt in enumerate(prompts):
        expected = (longer[i] if i in cut else short[i]).strip()
        dropped = i in cut and i in still
        assert by_prompt.get(prompt) == (None if dropped or not expected else expected), prompt
    assert replay_rows(ending_model_dir, None, system_prompt=system) == []


def test_replay_is_cached_per_model_prompts_and_system_prompt_and_drops_cut_answers(
    ending_model_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.eval.generate as generate
    from training.datasets import replay_rows

    replay_file = tmp_path / "replay.jsonl"
    replay_file.write_text("".join(json.dumps({"prompt": f"Tips on soup {i}?"}) + "\n"
                                   for i in range(3)))  # fmt: skip
    cache = tmp_path / "cache"
    kind = {"system_prompt": "Be kind.", "cache_dir": cache, "bf16": False}
    first = replay_rows(ending_model_dir, replay_file, **kind)
    assert first and len(list(cache.glob("*.json"))) == 1

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the replay answers should have come from the cache")

    monkeypatch.setattr(generate, "load_for_generation", no_model)
    again = replay_rows(ending_model_dir, replay_file, **kind)
    assert again == first
    with pytest.raises(AssertionError, match="from the cache"):  # answered in another dtype
        replay_rows(ending_model_dir, replay_file, **{**kind, "bf16": True})
    with pytest.raises(AssertionError, match="from the cache"):  # another system prompt
        replay_rows(ending_model_dir, replay_file, **{**kind, "system_prompt": "Be brief."})
    monkeypatch.undo()

    # The tiny model rarely ends a reply by itself: an answer cut off at the budget is
    # generated again with 4x the budget, and dropped if that is cut off too.
    kept = replay_rows(
        tiny_model_dir, replay_file, system_prompt="", cache_dir=cache, max_new_tokens=4
    )
    saved = [json.loads(f.read_text()) for f in cache.glob("*.json")]
    mine = next(s for s in saved if s["rows"] == kept)
    assert mine["cut_off"] >= 1 and len(kept) + mine["cut_off"] == 3


def test_sft_steps_follow_the_data_size_under_the_min_steps_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.trainer_args import stage_steps

    monkeypatch.setenv("TUNELOOP_TRAIN_BATCH_SIZE", "2")
    monkeypatch.setenv("TUNELOOP_SFT_EPOCHS", "2")
    config = RoundConfig.from_settings(Settings())
    off = dataclasses.replace(config, sft_min_steps=0)
    assert [stage_steps(n, off, "sft") for n in (10, 44, 200)] == [10, 44, 200]
    monkeypatch.setenv("TUNELOOP_SFT_MIN_STEPS", "100")
    monkeypatch.setenv("TUNELOOP_SFT_MAX_EPOCHS", "8")
    rule = RoundConfig.from_settings(Settings())
    # 10 rows: 5 steps an epoch, capped at 8 epochs; 44 rows: 100 steps (~4.5 epochs);
    # 200 rows: 2 epochs are already more than 100 steps
    assert [stage_steps(n, rule, "sft") for n in (10, 44, 200)] == [40, 100, 200]
    # set steps win, and the rule is SFT's alone
    assert stage_steps(44, dataclasses.replace(rule, sft_steps=7), "sft") == 7
    assert stage_steps(44, rule, "dpo") == 22
    assert stage_steps(44, dataclasses.replace(rule, max_steps=30), "sft") == 30
