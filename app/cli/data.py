"""`tuneloop import|export|init|status`: data in and out of the store, and what it holds."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import JsonOpt
from app.cli.common import emit as _emit
from app.cli.common import open_settings as _settings
from app.cli.common import open_store as _store
from app.cli.serve import model_label


class ImportFormat(StrEnum):
    auto = "auto"
    trl = "trl"
    hh = "hh"
    messages = "messages"
    openwebui = "openwebui"


class ExportKind(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"


class Split(StrEnum):
    train = "train"
    heldout = "heldout"
    all = "all"


def import_(
    file: Annotated[
        Path,
        typer.Argument(
            help="A JSONL file of preferences or conversations, or Open WebUI's feedback export."
        ),
    ],
    fmt: Annotated[
        ImportFormat, typer.Option("--format", help="auto | trl | hh | messages | openwebui")
    ] = ImportFormat.auto,
    as_json: JsonOpt = False,
) -> None:
    """Import preference pairs (TRL, Anthropic HH), SFT conversations (all or nothing), or
    Open WebUI's feedback export (its ratings, like `tuneloop openwebui sync`)."""
    from feedback.formats import import_file
    from feedback.openwebui import looks_like_export

    if fmt is ImportFormat.openwebui or (
        fmt is ImportFormat.auto and looks_like_export(_head(file))
    ):
        from app.cli.openwebui import describe, import_export

        report = import_export(_store(_settings()), file)
        _emit(as_json, {"format": "openwebui", **report}, describe(report))
        return

    settings = _settings()
    result = import_file(
        _store(settings), file, fmt.value, max_line_bytes=settings.import_max_line_kb * 1024
    )
    payload = {"format": result.format, "added": result.added, "duplicates": result.duplicates}
    text = (
        f"Imported {result.added} rows from {file} ({result.format}); "
        f"{result.duplicates} duplicates skipped."
    )
    _emit(as_json, payload, text)


def _head(path: Path) -> str:
    """The file's first characters ("" when it cannot be read, or is not a regular file
    such as a FIFO that would block the open: the import then says why)."""
    if not path.is_file():
        return ""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return ""


def export(
    kind: Annotated[
        ExportKind,
        typer.Argument(
            help="sft: conversations; dpo: preference pairs; kto: unpaired 👍/👎 replies."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL file.")],
    split: Annotated[Split, typer.Option("--split", help="train | heldout | all")] = Split.all,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Keep emails, phone numbers, card/account numbers and names as stored "
            "(default: scrubbed, as for training and Argilla).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export training data in TRL's conversational format, PII scrubbed unless --raw."""
    from feedback.formats import export as export_rows
    from training.datasets import read_seed_rows

    settings = _settings()
    store = _store(settings)
    plan = None
    if split.value != "all":  # the round's split: the domain's seed examples count too
        seeds = read_seed_rows(settings.data_dir / "seed_sft.jsonl")
        plan = store.heldout_split(min_items=settings.heldout_min_items, extra=seeds)
    n = export_rows(
        store, kind.value, out, split.value, plan, raw=raw, pii_region=settings.pii_region
    )
    payload = {
        "kind": kind.value,
        "split": split.value,
        "rows": n,
        "out": str(out),
        "pii": "raw" if raw else "scrubbed",
    }
    text = f"Wrote {n} {kind.value} rows ({split.value}, PII {payload['pii']}) to {out}."
    _emit(as_json, payload, text)


def init(
    folder: Annotated[Path, typer.Argument(help="The domain folder to create.")],
    as_json: JsonOpt = False,
) -> None:
    """Write a domain folder skeleton: system_prompt.md, a README, inactive *.example files.

    Refuses, writing nothing, if any of those files is already there. Point
    TUNELOOP_DATA_DIR at the folder to use it.
    """
    from training.domain import write_skeleton

    written = write_skeleton(folder)
    payload = {"folder": str(folder), "files": [p.name for p in written]}
    text = (
        f"Wrote {len(written)} files to {folder}: {', '.join(payload['files'])}.\n"
        f"Edit system_prompt.md, then: export TUNELOOP_DATA_DIR={folder}"
    )
    _emit(as_json, payload, text)


def status(as_json: JsonOpt = False) -> None:
    """Model, serving adapter version, and counts of what experts have given."""
    from app.cli.argilla import status_payload
    from training.registry import Registry

    settings = _settings()
    store = _store(settings)
    counts = store.counts()
    registry = Registry(settings.adapters_dir)
    named, version, problem = _serving(registry)
    from training.rounds_dir import (
        list_rounds,  # issue 4: the serving version's metrics, last round
    )

    rounds = list_rounds(settings.rounds_dir)
    from app.serving.health import FILE_NAME, read_health

    serving = read_health(settings.home / FILE_NAME)
    payload = {
        "model": model_label(settings),
        "adapter": version,
        "adapter_named": named,
        "adapter_problem": problem,
        "home": str(settings.home.resolve()),
        "database": settings.database_shown,
        "counts": counts,
        "adapter_metrics": registry.info(version).get("metrics") if version else None,
        "last_round": rounds[-1] if rounds else None,
        "argilla": status_payload(settings, store),
        "serving": serving,
    }
    by_source = counts.get("preferences_by_source", {})
    lines = [
        f"model:          {payload['model']}",
        f"adapter:        {version or 'none (bare base model)'}"
        + (f" (CURRENT names {named!r}, but {problem}; serve falls back)" if problem else ""),
        f"conversations:  {counts.get('conversations', 0)}",
        f"ratings:        {counts.get('ratings_up', 0)} up, {counts.get('ratings_down', 0)} down",
        f"corrections:    {counts.get('corrections', 0)}",
        "preferences:    "
        + (", ".join(f"{k} {v}" for k, v in sorted(by_source.items())) or "none"),
        _argilla_line(payload["argilla"]),
        _serving_line(serving),
    ]
    if rounds:
        last = rounds[-1]
        lines.append(f"last round:     {last['id']} {last.get('status')} ({last.get('stage')})")
    _emit(as_json, payload, "\n".join(lines))


def _serving(registry: Any) -> tuple[str | None, str | None, str | None]:
    """(what CURRENT names, what `serve` really serves, why they differ): a version whose
    files fail their checksums, or a pointer that names nothing valid, is not served."""
    from training.registry import RegistryError

    try:
        named = registry.current()
    except (RegistryError, OSError) as err:
        return None, None, f"CURRENT cannot be read ({err})"
    if named is None:
        return None, None, None
    try:
        registry.verify(named)
    except (RegistryError, OSError) as err:
        return named, None, str(err)
    return named, named, None


def _serving_line(serving: dict[str, Any] | None) -> str:
    if serving is None:
        return "serve:          not running from this home"
    line = (
        f"serve:          pid {serving['pid']}, {serving.get('active', 0)} API requests now, "
        f"decoding loop restarted {serving.get('decoder_restarts', 0)} times"
    )
    if serving.get("decoder_last_error"):
        line += f" (last: {serving['decoder_last_error']})"
    return line


def _argilla_line(argilla: dict[str, Any]) -> str:
    agreement = argilla["agreement"]
    alpha = agreement["alpha"]
    return (
        f"argilla:        {argilla['url'] or argilla['note']}; pairs {argilla['outbox']}; "
        f"agreement {agreement['percent_agreement']}, alpha "
        f"{'n/a' if alpha is None else round(alpha, 3)}, "
        f"{agreement['flagged_records']} flagged"
    )


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
    app.command("export")(export)
    app.command("init")(init)
    app.command()(status)
