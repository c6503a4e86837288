"""The process groups the local Argilla stack starts, seen through /proc: when a process
started (so a recycled pid is never mistaken for ours), who is in a group, what it holds in
memory, and stopping a group for good."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is gone for our purposes
        return None
    return int(fields[19])


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of the process group `pgid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def group_memory_kb(pgid: int) -> int:
    """Proportional set size (PSS) of every process in the group, in kB."""
    total = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM the group we started, SIGKILL it if it is still there after `timeout`."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while group_pids(pgid) and time.monotonic() < deadline:
        reap(pgid)
        time.sleep(0.2)
    if group_pids(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
    reap(pgid)


def reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (else it stays a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
