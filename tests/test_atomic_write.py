"""The one atomic-write helper: private from the start, all or nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from feedback.atomic_write import atomic_writer, write_atomic


def test_a_written_file_is_private_and_replaces_the_old_one(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # even where the umask would let others read
    try:
        target = tmp_path / "state.json"
        target.write_text("old")
        write_atomic(target, "new\n")
        write_atomic(tmp_path / "blob.bin", b"\x00\x01")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new\n"
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "rows.jsonl"
    target.write_text("complete\n")
    with pytest.raises(RuntimeError), atomic_writer(target) as out:
        out.write("half a row")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]
