"""`.ci/install-torch`, the part of `.ci/setup` that picks the torch build: run for real by
bash, with a stand-in interpreter that records the pip command instead of installing, and
a stand-in `nvidia-smi` saying whether there is a GPU. PyTorch's index is a local HTTP
server, or a closed port (the fallback path: on this network the real index is out of
reach too)."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".ci" / "install-torch"


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _run(tmp_path: Path, *, gpu: bool, index: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the script; (the process, the pip command the stand-in interpreter received)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _executable(bin_dir / "nvidia-smi", f"#!/bin/sh\nexit {0 if gpu else 1}\n")
    record = tmp_path / "pip-args"
    python = _executable(
        bin_dir / "python",
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ]; then echo "$@" > {record}; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n',
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "TORCH_CPU_INDEX": index, "TORCH_INDEX_TIMEOUT": "3"}  # fmt: skip
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(python)], env=env, capture_output=True, text=True, timeout=60
    )
    return proc, record.read_text().strip() if record.exists() else ""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket closes


@pytest.fixture
def cpu_index(tmp_path: Path) -> Iterator[str]:
    """A local stand-in for PyTorch's CPU wheel index (answers for /torch/)."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "index.html").write_text("<html></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[misc]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_cpu_machine_gets_the_cpu_build_from_pytorchs_index(
    tmp_path: Path, cpu_index: str
) -> None:
    proc, pip = _run(tmp_path, gpu=False, index=cpu_index)
    assert proc.returncode == 0, proc.stderr
    assert pip == f"-m pip install -q --index-url {cpu_index} torch==2.13.0"
    assert "CPU build" in proc.stderr


def test_an_unreachable_index_falls_back_to_the_default_one_and_says_so(
    tmp_path: Path,
) -> None:
    index = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    proc, pip = _run(tmp_path, gpu=False, index=index)
    assert proc.returncode == 0, proc.stderr
    assert pip == "-m pip install -q torch==2.13.0"  # pinned, from the default index
    assert f"CPU wheel index ({index}) cannot be reached" in proc.stderr
    assert "multi-GB CUDA build" in proc.stderr  # what the fallback may cost, and the fix


def test_a_gpu_machine_gets_the_default_cuda_build(tmp_path: Path) -> None:
    proc, pip = _run(tmp_path, gpu=True, index="http://127.0.0.1:9/never-asked")
    assert proc.returncode == 0, proc.stderr
    assert pip == "-m pip install -q torch"


def _extras(tmp_path: Path, *, nvidia_smi: int | None, python: str, backend: str = "") -> str:
    """What `.ci/extras PY` prints, with a stand-in `nvidia-smi` exiting `nvidia_smi`
    (None: no nvidia-smi at all) and TUNELOOP_BACKEND set to `backend`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if nvidia_smi is not None:
        _executable(bin_dir / "nvidia-smi", f"#!/bin/sh\nexit {nvidia_smi}\n")
    path = ":".join(
        p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists()
    )
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "extras"), python],
        env={**os.environ, "PATH": f"{bin_dir}:{path}", "TUNELOOP_BACKEND": backend},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


def test_setup_installs_the_gpu_extra_only_where_there_is_a_gpu(tmp_path: Path) -> None:
    """.ci/setup installs `.[EXTRAS]` with what .ci/extras prints: `gpu` (bitsandbytes) when
    nvidia-smi lists a GPU or the installed torch sees CUDA, and never on this CPU machine."""
    import tomllib

    setup = (REPO / ".ci" / "setup").read_text()
    assert 'extras="$(bash .ci/extras "$PY")"' in setup
    assert 'pip install -q -e ".[$extras]"' in setup
    # The real torch of this (CPU) machine, with and without a failing nvidia-smi.
    assert _extras(tmp_path, nvidia_smi=None, python=sys.executable) == "test,deepspeed,docs"
    assert _extras(tmp_path, nvidia_smi=9, python=sys.executable) == "test,deepspeed,docs"
    assert _extras(tmp_path, nvidia_smi=0, python=sys.executable) == "test,deepspeed,docs,gpu"
    # vLLM only where it can run: a GPU and the backend asked for.
    py = sys.executable
    assert (
        _extras(tmp_path, nvidia_smi=0, python=py, backend="vllm") == "test,deepspeed,docs,gpu,vllm"
    )
    assert _extras(tmp_path, nvidia_smi=9, python=py, backend="vllm") == "test,deepspeed,docs"
    # No nvidia-smi on PATH, but a torch that sees CUDA (a stand-in interpreter says so).
    cuda_python = _executable(tmp_path / "cuda-python", "#!/bin/sh\nexit 0\n")
    assert _extras(tmp_path / "x", nvidia_smi=None, python=str(cuda_python)) == (
        "test,deepspeed,docs,gpu"
    )
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(dep.startswith("bitsandbytes") for dep in optional["gpu"])
    assert any(dep.startswith("deepspeed") for dep in optional["deepspeed"])
    assert any(dep.startswith("mkdocs-material") for dep in optional["docs"])
