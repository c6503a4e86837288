"""A throwaway PostgreSQL cluster (Debian's `postgresql` binaries) for tests and benchmarks.

It runs on 127.0.0.1 with trust auth in a temp dir and is stopped and deleted afterwards;
it never touches a system cluster.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ClusterUnavailable(Exception):
    """PostgreSQL cannot run here; the message says why (a test skips with it)."""


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with initdb and pg_ctl."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a cluster; yields the base URL `postgresql+psycopg://postgres@127.0.0.1:PORT`."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise ClusterUnavailable("PostgreSQL server binaries not found: apt-get install postgresql")
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="tuneloop-pg-")
    if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise ClusterUnavailable(
                "running as root but there is no `postgres` user: apt-get install postgresql"
            ) from None
        os.chown(root, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -F"
        run(
            str(bin_dir / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"
        )
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(
            f"could not start PostgreSQL: {err.stderr.decode(errors='replace')}"
        ) from None
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)
