"""The wheels bench/gpu_check.sh needs on the lent GPU machine, downloaded here into `.whl/`.

That machine (Python 3.12, torch 2.11 + CUDA 13, accelerate, peft and an older transformers
already installed) reaches no package index, and only 64 MiB travel with one call, the
working tree included. So: every package the round, the gpu tests and the benchmarks import
that its image lacks (bench/gpu-requirements.txt, pinned to what this project runs with),
for CPython 3.12 on x86-64 Linux, without their dependencies (the list names each one).
bitsandbytes' wheel holds a library for every CUDA and ROCm release (43 MB); the copy made
here keeps only the CUDA 13 ones and the CPU one, which is all torch 2.11+cu130 loads.

    .venv/bin/python -m bench.gpu_wheels          # -> .whl/ (git-ignored), prints its size

Then the device call carries `.whl` and runs `bash bench/gpu_check.sh .whl`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "bench" / "gpu-requirements.txt"
# What travels with one device call, and what the working tree itself takes of it (~1.5 MB).
BUDGET = 64 * 2**20
TREE_ALLOWANCE = 4 * 2**20
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_26_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# bitsandbytes picks libbitsandbytes_cuda{torch.version.cuda} (130 for torch's CUDA 13.0).
KEEP_BNB = ("libbitsandbytes_cuda13", "libbitsandbytes_cpu")


def download(dest: Path) -> None:
    """pip download of every pinned requirement, CPython 3.12 / x86-64 wheels only."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms,
         "-d", str(dest), "-r", str(REQUIREMENTS)],
        check=True,
    )  # fmt: skip


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def slim_bitsandbytes(wheel: Path) -> None:
    """Rewrite the wheel without the native libraries torch 2.11+cu130 never loads, with a
    RECORD that lists only what is left (pip checks it)."""
    kept: dict[str, bytes] = {}
    record_name = ""
    with zipfile.ZipFile(wheel) as zin:
        for info in zin.infolist():
            name = info.filename
            if name.endswith(".dist-info/RECORD"):
                record_name = name
                continue
            base = name.rsplit("/", 1)[-1]
            if base.startswith("libbitsandbytes_") and not base.startswith(KEEP_BNB):
                continue
            kept[name] = zin.read(info)
    if not record_name or not any(Path(n).name.startswith(KEEP_BNB[0]) for n in kept):
        raise SystemExit(f"{wheel.name}: no CUDA 13 library or no RECORD; not slimmed")
    record = [f"{n},{_record_hash(data)},{len(data)}" for n, data in kept.items()]
    record.append(f"{record_name},,")
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, data in kept.items():
            zout.writestr(name, data)
        zout.writestr(record_name, "\n".join(record) + "\n")
    tmp.replace(wheel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, default=REPO / ".whl")
    args = parser.parse_args()
    args.dest.mkdir(exist_ok=True)
    download(args.dest)
    for wheel in args.dest.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(wheel)
    total = sum(p.stat().st_size for p in args.dest.glob("*.whl"))
    print(f"{len(list(args.dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {args.dest}")
    if total > BUDGET - TREE_ALLOWANCE:
        raise SystemExit(f"too large to travel with the working tree (64 MiB in all): {total}")


if __name__ == "__main__":
    main()
