"""Which process of a multi-process round this is, and the few collectives a round needs.

`torchrun --nproc_per_node N -m app.cli train` (or `accelerate launch --num_processes N`)
starts N copies of `tuneloop train`, one per device. TRL's trainer splits every batch
across them (DDP, FSDP or DeepSpeed through accelerate); everything around training (the
round lock, the snapshot, evaluation, the gate, registry writes, the report) happens once,
on the main process, and the others wait for its outcome here. In a single process, which
is the usual case, every helper below is a no-op and nothing distributed is initialised.

The launchers describe the process group in WORLD_SIZE / RANK / LOCAL_RANK; those are the
launcher's contract with the processes it starts, not tuneloop settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from training.device.machine import deepspeed_on_cpu, on_cuda

T = TypeVar("T")

# The other processes wait at a barrier while the main one takes the snapshot (the base
# model's replay answers) and evaluates the candidates; on a large model either can outlast
# torch's default 30-minute collective timeout, which would kill a healthy round.
WAIT_TIMEOUT = timedelta(hours=6)


class MainProcessError(Exception):
    """The main process failed at a step the other processes were waiting for."""


def world_size() -> int:
    """How many processes run this round (1 unless started by torchrun / accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched() -> bool:
    """Whether this process is one of several started together for one round."""
    return world_size() > 1


def deepspeed_zero3() -> bool:
    """Whether `accelerate launch` started this process under DeepSpeed ZeRO stage 3."""
    return launched() and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


def fsdp() -> bool:
    """Whether `accelerate launch` started this process under FSDP."""
    return launched() and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def sharded() -> bool:
    """Whether the launcher shards the model itself (FSDP, DeepSpeed ZeRO-3): the model is
    then loaded without a device map and every parameter must share one storage dtype."""
    return deepspeed_zero3() or fsdp()


def load_alone() -> None:
    """Let the main process load models on its own (evaluation, after training). Under
    ZeRO-3 the trainer leaves transformers' DeepSpeed config set, and with it every
    `from_pretrained` becomes a `deepspeed.zero.Init` that partitions the weights over all
    processes: a collective the others, already done, would never join."""
    if deepspeed_zero3():
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def _state() -> Any:
    """accelerate's process state, initialised the way TRL's trainer will find it later:
    on CPU with gloo (`use_cpu`), on CUDA with each process on its own local device."""
    from accelerate import PartialState

    cuda = on_cuda()
    if not cuda:
        deepspeed_on_cpu()
    return PartialState(cpu=not cuda, timeout=WAIT_TIMEOUT)


def is_main() -> bool:
    """True in the one process that writes round state, registry entries and reports."""
    return not launched() or int(os.environ.get("RANK", "0") or 0) == 0


def local_rank() -> int:
    """This process's device index on its machine (0 in a single process)."""
    return _state().local_process_index if launched() else 0


def barrier() -> None:
    """Wait until every process got here."""
    if launched():
        _state().wait_for_everyone()


def finish() -> None:
    """Every process has its outcome: meet once more, then close the process group together.
    A process that exits with the group still open can leave gloo's threads talking to a
    peer that is already gone, and the C++ runtime then aborts the process at exit."""
    if not launched():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def _broadcast(value: Any) -> Any:
    from accelerate.utils import broadcast_object_list

    _state()
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` in the main process only; every process gets its return value. When `fn`
    raises, the main process raises it and the others raise MainProcessError with its
    message, so that no process waits for a main process that already gave up."""
    if not launched():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as err:
            _broadcast(("error", str(err)))
            raise
    kind, value = _broadcast(outcome)
    if kind == "error":
        raise MainProcessError(value)
    return value


def share(value: T) -> T:
    """The main process's `value`, in every process."""
    return _broadcast(value) if launched() else value


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (e.g. converting a model file once); the
    others run it after, when its results are on disk."""
    if not launched():
        yield
        return
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()
