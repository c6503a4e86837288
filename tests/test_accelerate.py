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
            "A spider has eight legs; a grey sky means rain, {i}.",
            "Paris.",
        ),
    )
    assert result["status"] in ("done", "rejected", "inconclusive"), result
    assert result["version"] and result["serving_after"] is None  # --no-promote
    adapter = settings.adapters_dir / "versions" / result["version"]
    assert (adapter / "adapter_config.json").is_file()
