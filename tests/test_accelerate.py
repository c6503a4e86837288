"""The shipped multi-GPU configs load with accelerate's own classes, and a round runs under
`accelerate launch` (one CPU process here; several GPUs use the same command)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "accelerate"


def _launch_env(config: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """What `accelerate launch --config_file config` would set up, as accelerate builds it."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "round.py"])
    args, defaults, mixed_from_config = _validate_launch_command(args)
    assert defaults is not None and args.num_processes >= 2
    if args.use_deepspeed:
        # the same fields accelerate's launch_command adds before its DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (
            ["mixed_precision"] if mixed_from_config else []
        )
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    return args


def test_the_fsdp_config_loads_into_accelerates_fsdp_plugin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    args = _launch_env(CONFIGS / "fsdp.yaml", monkeypatch)
    assert args.use_fsdp
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # the adapter is saved whole
    assert plugin.auto_wrap_policy is not None


def test_the_deepspeed_config_loads_into_accelerates_deepspeed_plugin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from accelerate import DeepSpeedPlugin
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(CONFIGS / "deepspeed.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    args = _launch_env(CONFIGS / "deepspeed.yaml", monkeypatch)
    assert args.use_deepspeed
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 2
    ds = plugin.deepspeed_config
    # batch size, accumulation and clipping come from the round's TrainingArguments
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert ds[key] == "auto", key
    assert ds["gradient_clipping"] == "auto"


def test_a_round_runs_under_accelerate_launch_on_one_cpu_process(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    """`accelerate launch ... -m app.cli train`: the same command starts a multi-GPU round."""
    import shutil
    import sys

    from tests.cli import train_in_subprocess

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert launcher, "accelerate's launcher is installed with the package"
    settings, result = train_in_subprocess(
        tiny_model_dir,
        launcher=[launcher, "launch", "--num_processes", "1", "--cpu", "--mixed_precision", "no"],
        tracker="none",
        max_steps=1,
        pairs=(
            "Tell me about spiders and the sky, {i}.",
            "A spider has eight legs; a grey sky means rain.",
            "Paris.",
        ),
    )
    assert result["status"] in ("done", "rejected"), result
    assert result["version"] and result["serving_after"] is None  # --no-promote
    adapter = settings.adapters_dir / "versions" / result["version"]
    assert (adapter / "adapter_config.json").is_file()


TOPICS = (
    "How do I water tomatoes in a hot summer?",
    "What goes into a simple loaf of bread?",
    "How often does a bicycle chain need oil?",
    "Will it rain if the sky turns grey and the wind is cold?",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Which month comes after June?",
    "Can you give me a recipe for vegetable soup?",
)


def _torchrun(processes: int) -> list[str]:
    """`torchrun --standalone --nproc_per_node N`: N processes, on a free rendezvous port."""
    import shutil
    import sys

    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert launcher, "torchrun is installed with torch"
    return [launcher, "--standalone", "--nproc_per_node", str(processes)]


def test_a_round_runs_on_two_cpu_processes_under_torchrun(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    """Two ranks over gloo train one round: one version, one report, rank 0's adapter."""
    import json

    from safetensors.torch import load_file

    from app.config import Settings
    from feedback.store import Store
    from tests.cli import train_in_subprocess
    from tests.tiny import add_pairs

    Settings().home.mkdir(parents=True)
    store = Store.open(Settings().database)
    for topic in TOPICS:  # distinct prompts: near-duplicates would be curated away
        add_pairs(store, 1, prompt=topic, chosen="Short, polite and correct.", rejected="No.")
    settings, result = train_in_subprocess(
        tiny_model_dir,
        launcher=_torchrun(2),
        tracker="none",
        max_steps=4,
        pairs=("Tell me about bread, {i}.", "Flour, water, salt and yeast.", "Paris."),
    )
    assert result["status"] in ("done", "rejected"), result
    versions = settings.adapters_dir / "versions"
    assert [p.name for p in versions.iterdir()] == [result["version"]]  # one writer
    rounds = [p for p in (settings.home / "rounds").iterdir() if p.is_dir()]
    assert [p.name for p in rounds] == [result["id"]]
    folder = rounds[0]
    assert sorted(p.name for p in folder.glob("report.*")) == ["report.json", "report.md"]
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == result["status"] and state["version"] == result["version"]
    # Each step took 2 rows on each rank: the DPO epoch took fewer steps than one process
    # would (2 rows a step, capped at 4).
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    dpo_rows = json.loads((folder / "snapshot.json").read_text())["counts"]["dpo_train"]
    dpo_steps = max(s["step"] for s in steps if s["stage"] == "dpo")
    assert dpo_steps == -(-dpo_rows // 4) < min(-(-dpo_rows // 2), 4), dpo_rows
    # The registered version is what rank 0 saved, a plain PEFT adapter (no DPO "ref" copy).
    stage = folder / result["candidate_stage"] / "adapter"
    registered = versions / result["version"]
    assert not (stage / "ref").exists()
    trained = load_file(str(stage / "adapter_model.safetensors"))
    served = load_file(str(registered / "adapter_model.safetensors"))
    assert trained.keys() == served.keys() and trained
    assert all(trained[k].equal(served[k]) for k in trained)
