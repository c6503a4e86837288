"""Write a file so that a reader sees the old content or the new one, never half of it.

Every state file, pointer, cache and export goes through here: the text lands in a temp file
in the same folder (so the rename cannot cross file systems), created owner-only (0600: the
home is private, and a file is never readable by others even for a moment), fsync'd, renamed
over the target with `os.replace`, and the folder fsync'd so the rename itself survives a
power loss.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_writer(path: str | Path, *, binary: bool = False) -> Iterator[IO[Any]]:
    """A handle to write `path`'s new content; it replaces `path` when the block ends.

    An error in the block (or a crash) leaves `path` as it was and removes the temp file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace `path` with `data` (text as UTF-8) atomically and durably, mode 0600."""
    with atomic_writer(path, binary=isinstance(data, bytes)) as out:
        out.write(data)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry inside `path` durable; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)
