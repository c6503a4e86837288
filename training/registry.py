"""Adapter versions on disk and the CURRENT pointer that says which one the chat app serves.

Layout under `root`:

    versions/<version>/   a PEFT adapter dir, copied in whole, plus MANIFEST.json (sha256 of
                          every file) so a partial copy or a flipped bit is caught before
                          anything is served from it
    CURRENT               one line: the served version's name; absent means the bare base model
    HISTORY               append-only JSON lines, one per pointer change (rollback reads it)
    info/<version>.json   what is known about a version (training metadata, metrics, eval
                          results, a rejection reason); kept outside the checksummed dir so
                          it can grow after registration

Every change lands atomically (temp file or dir, then rename), so a reader such as the
running chat server never sees half a version or half a pointer, even if the writer is
killed. A lock file serialises writers across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.atomic_write import fsync_dir, write_atomic

MANIFEST = "MANIFEST.json"
# Safe as a directory name everywhere and unambiguous in a one-line pointer file.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class RegistryError(Exception):
    """A user-facing registry problem: bad name, unknown, partial or corrupted version."""


class PromotionRefusedError(RegistryError):
    """The gate did not pass this version; promoting it needs `force`."""


class CurrentChangedError(RegistryError):
    """CURRENT no longer names the version a promotion was judged against."""


# `expect` left out: promote whatever serves now.
_ANY: Any = object()


# Gate decisions that keep a version from being promoted unless an operator forces it.
NOT_PASSED = ("reject", "inconclusive")


class Registry:
    """Adapter versions under `root/versions/` and the `root/CURRENT` pointer."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer_file = self.root / "CURRENT"
        self.history_file = self.root / "HISTORY"
        self._lock_file = self.root / ".lock"

    # -- reading ---------------------------------------------------------------------------
    def current(self) -> str | None:
        """The version CURRENT names, or None when the bare base model is served."""
        try:
            name = self.pointer_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def versions(self) -> list[str]:
        """Registered versions, oldest first (registration time, then name)."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for entry in self.versions_dir.iterdir():
            if entry.is_dir() and _VERSION_RE.fullmatch(entry.name):
                found.append((str(self._manifest(entry).get("registered_at", "")), entry.name))
        return [name for _, name in sorted(found)]

    def path(self, version: str) -> Path:
        """Where `version` lives (whether or not it exists); refuses an invalid name."""
        _check_name(version)
        return self.versions_dir / version

    def history(self) -> list[dict[str, Any]]:
        """Pointer changes, oldest first: `{"at", "from", "to"}` (None = bare base)."""
        try:
            lines = self.history_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def info(self, version: str) -> dict[str, Any]:
        """Everything recorded about `version` with `update_info` ({} when nothing yet)."""
        try:
            data = json.loads(self._info_file(version).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise RegistryError(f"unreadable info for adapter version {version!r}: {err}") from err
        return data if isinstance(data, dict) else {}

    # -- writing ---------------------------------------------------------------------------
    def update_info(self, version: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` (JSON-serialisable) into `version`'s info; atomic; returns the new info.

        A top-level key is replaced as a whole, so callers that add to a nested dict
        (say, `evals`) read `info()` first and write the merged dict back.
        """
        target = self._info_file(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            data = self.info(version)
            data.update(fields)
            write_atomic(target, json.dumps(data, indent=2, default=str) + "\n")
        return data

    def register(self, version: str, adapter_dir: Path) -> Path:
        """Copy a PEFT adapter dir in as `version`, with checksums; returns its new path.

        The copy is made in a temp dir beside the versions and renamed into place, so the
        version either exists complete or not at all. An existing version is never replaced.
        """
        dest = self.path(version)
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise RegistryError(
                f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)"
            )
        if not any((adapter_dir / name).is_file() for name in _ADAPTER_WEIGHTS):
            raise RegistryError(
                f"{adapter_dir} has no adapter weights ({' or '.join(_ADAPTER_WEIGHTS)})"
            )
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if dest.exists():
                raise RegistryError(f"adapter version {version!r} already exists; pick a new name")
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.versions_dir))
            try:
                shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
                (tmp / MANIFEST).unlink(missing_ok=True)  # never trust a manifest we did not write
                files = {
                    rel: {"sha256": _sha256(tmp / rel), "size": (tmp / rel).stat().st_size}
                    for rel in _relative_files(tmp)
                }
                manifest = {
                    "version": version,
                    "registered_at": datetime.now(UTC).isoformat(),
                    "source": str(adapter_dir.resolve()),
                    "files": files,
                }
                write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
                for rel in files:
                    _fsync_file(tmp / rel)
                fsync_dir(tmp)
                os.rename(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self.versions_dir)
        return dest

    def verify(self, version: str) -> Path:
        """Recompute every checksum of `version`; returns its path or says what is wrong."""
        where = self.path(version)
        if not where.is_dir():
            raise RegistryError(f"adapter version {version!r} is not registered (no {where})")
        manifest_path = where / MANIFEST
        if not manifest_path.is_file():
            raise RegistryError(
                f"adapter version {version!r} is incomplete: {manifest_path} is missing "
                "(a partial copy?). Register the adapter again under a new name."
            )
        try:
            files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
            expected = {str(rel): (str(v["sha256"]), int(v["size"])) for rel, v in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise RegistryError(
                f"adapter version {version!r} is corrupted: unreadable {manifest_path} ({err})"
            ) from err
        if "adapter_config.json" not in expected:
            raise RegistryError(f"adapter version {version!r} is corrupted: no adapter_config.json")
        for rel, (sha, size) in sorted(expected.items()):
            file = where / rel
            if not file.is_file():
                raise RegistryError(f"adapter version {version!r} is incomplete: {rel} is missing")
            if file.stat().st_size != size or _sha256(file) != sha:
                raise RegistryError(
                    f"adapter version {version!r} is corrupted: {rel} does not match its checksum"
                )
        return where

    def set_current(self, version: str | None, *, expect: str | None = _ANY) -> None:
        """Point CURRENT at `version` (verified first), or remove it (None: bare base).

        The pointer is replaced atomically, so a server polling it reads the old name or
        the new one, never a torn write; each change is appended to HISTORY. With `expect`,
        CurrentChangedError unless CURRENT still names it (None: the bare base), checked
        under the same lock as the change.
        """
        if version is not None:
            self.verify(version)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            previous = self.current()
            if expect is not _ANY and previous != expect:
                raise CurrentChangedError(
                    f"CURRENT changed from {expect or 'the bare base model'} to "
                    f"{previous or 'the bare base model'} since {version} was judged against it"
                )
            if previous == version:
                return
            if version is None:
                self.pointer_file.unlink(missing_ok=True)
                fsync_dir(self.root)
            else:
                write_atomic(self.pointer_file, version + "\n")
            entry = {"at": datetime.now(UTC).isoformat(), "from": previous, "to": version}
            with open(self.history_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())

    # -- promotion: the one path every entry point (CLI, Operator tab, rounds) takes --------
    def promote(
        self, version: str, *, by: str, force: bool = False, expect: str | None = _ANY
    ) -> tuple[str | None, str]:
        """Serve `version` now; returns (previous, new). A version the gate rejected or
        could not decide on is refused unless `force` (recorded as forced, with who).
        `expect`: the version the gate compared it with (None: the bare base); when CURRENT
        names another by now, CurrentChangedError and nothing changes."""
        info = self.info(version)
        decision = info.get("decision")
        if decision in NOT_PASSED and not force:
            why = "; ".join(info.get("reasons") or []) or "see its round's report"
            raise PromotionRefusedError(
                f"the gate's decision on {version} was {decision} ({why}); "
                "promote it anyway with `tuneloop promote --force`"
            )
        before = self.current() if expect is _ANY else expect
        self.set_current(version, expect=expect)
        self.update_info(
            version,
            status="promoted",
            promoted_by=by,
            promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
            forced=bool(force and decision in NOT_PASSED),
        )
        return before, version

    def rollback_target(self) -> str | None:
        """The version that served before the current one (None = the bare base), skipping
        versions already rolled back; RegistryError when the pointer never moved."""
        current = self.current()
        for entry in reversed(self.history()):
            target = entry.get("from")
            if target == current:
                continue
            if target is None or self.info(target).get("status") != "rolled_back":
                return target
        raise RegistryError("nothing to roll back to: CURRENT has never pointed elsewhere")

    def rollback(self, *, by: str) -> tuple[str | None, str | None]:
        """Serve the version that served before the current one; returns (previous, new)."""
        before = self.current()
        target = self.rollback_target()
        self.set_current(target)
        if before is not None and before in self.versions():  # not a hand-edited name
            self.update_info(before, status="rolled_back", rolled_back_by=by)
        return before, target

    # -- helpers ---------------------------------------------------------------------------
    def _info_file(self, version: str) -> Path:
        _check_name(version)
        return self.root / "info" / f"{version}.json"

    def _manifest(self, where: Path) -> dict[str, Any]:
        try:
            data = json.loads((where / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (other processes included) with a lock file (`filelock`)."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self._lock_file):
            yield


def _check_name(version: str) -> None:
    # "CURRENT" is what the chat engine's `adapter=` uses for "the pointer", not a version.
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version) or version == "CURRENT":
        raise RegistryError(
            f"invalid adapter version name {version!r}: use 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (and not CURRENT)"
        )


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
