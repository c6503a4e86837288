"""Rounds under launchers. The shipped multi-GPU configs load with accelerate's own classes
and set up each process as the round expects; real multi-process rounds run here on CPU
(two ranks over gloo): started by `tuneloop watch` through the DDP config (accelerate's
launcher runs torchrun's elastic agent, as `torchrun -m app.cli train` does), and by
`accelerate launch` with the configs that shard the base."""

from __future__ import annotations

import json
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

    config = load_config_from_file(str(CONFIGS / "deepspeed-zero2.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    args = _launch_env(CONFIGS / "deepspeed-zero2.yaml", monkeypatch)
    assert args.use_deepspeed
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 2
    ds = plugin.deepspeed_config
    # batch size, accumulation and clipping come from the round's TrainingArguments
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert ds[key] == "auto", key
    assert ds["gradient_clipping"] == "auto"


# What each shipped config sets up: accelerate's distributed type, and whether the launcher
# shards the base itself (the round then loads it without a device map).
SHIPPED = {
    "ddp.yaml": ("MULTI_GPU", False),
    "fsdp.yaml": ("FSDP", True),
    "deepspeed-zero2.yaml": ("DEEPSPEED", False),
    "deepspeed-zero3.yaml": ("DEEPSPEED", True),
}


def test_every_shipped_config_is_checked() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_config_starts_processes_the_round_places_correctly(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment `accelerate launch --config_file NAME` gives each process, and what
    the round decides from it: rank 1 is no main process; FSDP / ZeRO-3 shard the base."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from training.device import ranks

    kind, sharded = SHIPPED[name]
    assert load_config_from_file(str(CONFIGS / name)).distributed_type == DistributedType[kind]
    _launch_env(CONFIGS / name, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert ranks.launched() and not ranks.is_main()
    assert ranks.sharded() is sharded


def test_the_zero3_config_gathers_the_adapter_when_it_is_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from accelerate import DeepSpeedPlugin

    _launch_env(CONFIGS / "deepspeed-zero3.yaml", monkeypatch)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag
    zero = plugin.deepspeed_config["zero_optimization"]
    # without it, save_model under ZeRO-3 writes an adapter of empty shards
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True


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


def _dpo_steps_took_two_ranks(folder: Path, *, cap: int) -> bool:
    """Each DPO step took 2 rows on each of 2 ranks: the epoch took fewer steps than one
    process would have (2 rows a step, at most `cap`)."""
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rows = json.loads((folder / "snapshot.json").read_text())["counts"]["dpo_train"]
    ran = max(s["step"] for s in steps if s["stage"] == "dpo")
    assert ran == -(-rows // 4) < min(-(-rows // 2), cap), (ran, rows)
    return True


# The shipped configs that shard the base starting a real round: 2 CPU processes over gloo
# (DeepSpeed's CPU accelerator uses gloo too, without Intel's oneCCL). ZeRO-3 in the fast
# tier: it shards the base, gathers the adapter and computes DPO's reference per step; FSDP
# `slow`. ZeRO-2 shards neither base nor adapter, so its round would test nothing ZeRO-3's
# does not: its config is checked above, as accelerate loads it and starts processes; DDP's
# round is the `watch` test below.
CONFIG_ROUNDS = [
    pytest.param("deepspeed-zero3.yaml", id="zero3"),
    pytest.param("fsdp.yaml", id="fsdp", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", CONFIG_ROUNDS)
def test_each_shipped_config_starts_a_round_on_two_cpu_processes(
    name: str, _isolated_home: Path, tiny_model_dir: Path
) -> None:
    """`accelerate launch --config_file CONFIG -m app.cli train` on two ranks: one version,
    rank 0's adapter whole (a sharded save that did not gather would leave empty tensors)."""
    import shutil
    import sys

    from safetensors.torch import load_file

    from app.config import Settings
    from feedback.store import Store
    from tests.cli import train_in_subprocess
    from tests.tiny import add_pairs

    if "deepspeed" in name:
        pytest.importorskip("deepspeed", reason="the `deepspeed` extra .ci/setup installs")
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert launcher, "accelerate's launcher is installed with the package"
    Settings().home.mkdir(parents=True)
    store = Store.open(Settings().database)
    for k, topic in enumerate(TOPICS):
        add_pairs(
            store, 1, prompt=topic, chosen=f"Short, polite and correct ({k}).", rejected="No."
        )
    # The configs ask for bf16 on GPUs; a CPU round trains in fp32, and DeepSpeed refuses a
    # config whose precision differs from the trainer's.
    settings, result = train_in_subprocess(
        tiny_model_dir,
        launcher=[launcher, "launch", "--config_file", str(CONFIGS / name),
                  "--main_process_port", str(_free_port()), "--mixed_precision", "no"],
        tracker="none",
        max_steps=4,
        pairs=("Tell me about bread, {i}.", "Flour, water, salt and yeast, {i}.", "Paris."),
    )  # fmt: skip
    assert result["status"] == "inconclusive", result  # INCONCLUSIVE_GATE
    versions = settings.adapters_dir / "versions"
    assert [p.name for p in versions.iterdir()] == [result["version"]]
    folder = settings.rounds_dir / result["id"]
    assert _dpo_steps_took_two_ranks(folder, cap=4)
    trained = load_file(
        str(folder / result["candidate_stage"] / "adapter" / "adapter_model.safetensors")
    )
    served = load_file(str(versions / result["version"] / "adapter_model.safetensors"))
    assert trained and trained.keys() == served.keys()
    assert all(t.numel() > 0 and t.equal(served[k]) for k, t in trained.items())
    assert all(t.abs().sum() > 0 for k, t in trained.items() if "lora_A" in k)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_watch_starts_a_launched_round_with_the_shipped_ddp_config(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    """`tuneloop watch --once` with TUNELOOP_TRAIN_LAUNCHER set to `accelerate launch` and
    the shipped DDP config: two processes (gloo on this CPU) run the round; one result."""
    import os
    import subprocess
    import sys

    from app.config import Settings
    from feedback.store import Store
    from tests.cli import INCONCLUSIVE_GATE
    from tests.tiny import add_pairs

    settings = Settings()
    settings.home.mkdir(parents=True)
    store = Store.open(settings.database)
    for k, topic in enumerate(TOPICS):
        add_pairs(
            store, 1, prompt=topic, chosen=f"Short, polite and correct ({k}).", rejected="No."
        )
    launcher = (
        f"accelerate launch --config_file {CONFIGS / 'ddp.yaml'} --main_process_port {_free_port()}"
    )
    env = {**os.environ, **INCONCLUSIVE_GATE, "TUNELOOP_MODEL": str(tiny_model_dir),
           "TUNELOOP_TRACKER": "none", "TUNELOOP_TRAIN_MAX_STEPS": "4",
           "TUNELOOP_ROUND_MIN_NEW": "5", "TUNELOOP_TRAIN_LAUNCHER": launcher}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "watch", "--once", "--json"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    log = (settings.rounds_dir / "watch.log").read_text()
    assert event["run"] and event["result"]["returncode"] == 0, log[-3000:]
    outcome = event["result"]["round"]
    folder = settings.rounds_dir / outcome["id"]
    assert _dpo_steps_took_two_ranks(folder, cap=4)
    assert outcome["status"] == "inconclusive", log[-2000:]
    versions = settings.adapters_dir / "versions"
    assert [p.name for p in versions.iterdir()] == [outcome["version"]]  # one writer
    printed = [line for line in log.splitlines() if line.startswith('{"id": ')]
    assert len(printed) == 1  # only the main process printed a result
    assert sorted(p.name for p in folder.glob("report.*")) == ["report.json", "report.md"]
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == outcome["status"] and state["version"] == outcome["version"]
    # The registered version is what rank 0 saved, a plain PEFT adapter (no DPO "ref" copy).
    from safetensors.torch import load_file

    stage = folder / outcome["candidate_stage"] / "adapter"
    assert not (stage / "ref").exists()
    trained = load_file(str(stage / "adapter_model.safetensors"))
    served = load_file(str(versions / outcome["version"] / "adapter_model.safetensors"))
    assert trained.keys() == served.keys() and trained
    assert all(trained[k].equal(served[k]) for k in trained)


def test_a_launcher_that_is_not_installed_is_a_clear_error() -> None:
    from training.schedule import LauncherError, train_command

    assert train_command(launcher="torchrun --nproc_per_node 2")[1:3] == [
        "--nproc_per_node",
        "2",
    ]
    with pytest.raises(LauncherError, match="no-such-launcher"):
        train_command(launcher="no-such-launcher --x")


def test_two_ranks_see_a_running_round_and_both_stop(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    """While a round holds the lock, a two-process `tuneloop train` starts nothing: rank 0
    cannot take the lock, and rank 1 hears so instead of waiting for it."""
    import os
    import subprocess

    from app.config import Settings
    from training.rounds_dir import exclusive_lock

    settings = Settings()
    rounds = settings.rounds_dir
    env = {**os.environ, "TUNELOOP_MODEL": str(tiny_model_dir), "TUNELOOP_TRACKER": "none"}
    with exclusive_lock(rounds):
        proc = subprocess.run(
            [*_torchrun(2), "-m", "app.cli", "train", "--json"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("another training round is running" in e for e in errors)
    assert [p.name for p in rounds.iterdir()] == [".lock"]  # no round folder, no state
