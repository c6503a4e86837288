"""Import preference and SFT data from JSONL files, and export training rows as JSONL.

Import formats (one JSON object per line):
- `trl`: TRL preference rows, `prompt`/`chosen`/`rejected`, either conversational
  (message lists) or plain strings (a user prompt and assistant replies).
- `hh`: Anthropic HH-RLHF, `chosen`/`rejected` transcripts of "\\n\\nHuman: ..." and
  "\\n\\nAssistant: ..." turns that differ only in the last assistant turn.
- `messages`: SFT conversations `{"messages": [...]}` ending with an assistant turn.
- `auto`: decided from the first non-empty line; every line must then match.

A file is imported whole or not at all: the first malformed line raises
`FeedbackError("PATH:LINE: what is wrong")` before anything is written. Memory stays
bounded per line: only regular files are read (never a device, a FIFO or a folder), line
by line, and a line longer than `max_line_bytes` is refused with its number.

Exports are PII-scrubbed (`feedback.pii`) unless the operator asks for the raw text.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.atomic_write import atomic_writer
from feedback.errors import FeedbackError
from feedback.messages import check_conversation, check_storable, clean_messages
from feedback.pii import scrub_row
from feedback.records import NewExample, NewPreference
from feedback.split import HeldoutSplit
from feedback.store import Store

FORMATS = ("auto", "trl", "hh", "messages")
EXPORT_KINDS = ("sft", "dpo", "kto")

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class ImportResult:
    """What an import did: the format it read, rows added, rows already present."""

    format: str
    added: int
    duplicates: int


Row = NewPreference | NewExample


def _require(row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if key not in row:
            raise FeedbackError(f"missing key {key!r}")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FeedbackError(f"{what} must be non-empty text")
    return value


def _assistant_reply(value: Any, what: str) -> str:
    """The text of a TRL `chosen`/`rejected`: a string or a one-assistant-message list."""
    if isinstance(value, str):
        return _text(value, what)
    messages = clean_messages(value, what=what)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise FeedbackError(f"{what} must be a list with exactly one assistant message")
    return messages[0]["content"]


def parse_trl(row: dict[str, Any]) -> NewPreference:
    """A TRL preference row (conversational or plain strings) as a preference."""
    _require(row, "prompt", "chosen", "rejected")
    prompt_value = row["prompt"]
    if isinstance(prompt_value, str):
        prompt = [{"role": "user", "content": _text(prompt_value, "prompt")}]
    else:
        prompt = clean_messages(prompt_value, what="prompt")
    if prompt[-1]["role"] != "user":
        raise FeedbackError("prompt must end with a user message")
    chosen = _assistant_reply(row["chosen"], "chosen")
    rejected = _assistant_reply(row["rejected"], "rejected")
    if chosen == rejected:
        raise FeedbackError("chosen and rejected are identical; drop the line")
    return NewPreference(prompt=prompt, chosen=chosen, rejected=rejected)


def parse_hh_transcript(text: Any, what: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages."""
    # Some copies drop the leading blank line; the first turn then starts at "Human:".
    parts = _HH_TURN.split("\n\n" + _text(text, what).lstrip())
    if parts[0].strip():
        raise FeedbackError(f"{what} has text before its first '\\n\\nHuman:' turn")
    turns = [
        {"role": _HH_ROLES[speaker], "content": body.strip()}
        for speaker, body in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not any(turn["role"] == "user" for turn in turns):
        raise FeedbackError(f"{what} has no '\\n\\nHuman:' turn")
    if turns[-1]["role"] != "assistant":
        raise FeedbackError(f"{what} must end with an '\\n\\nAssistant:' turn")
    for index, turn in enumerate(turns):
        if not turn["content"]:
            raise FeedbackError(f"{what} turn {index + 1} ({turn['role']}) is empty")
    return turns


def parse_hh(row: dict[str, Any]) -> NewPreference:
    """An HH-RLHF row: shared leading turns become the prompt, last replies the pair."""
    _require(row, "chosen", "rejected")
    chosen = parse_hh_transcript(row["chosen"], "chosen")
    rejected = parse_hh_transcript(row["rejected"], "rejected")
    if chosen == rejected:
        raise FeedbackError("chosen and rejected are identical: no divergence to learn from")
    if chosen[:-1] != rejected[:-1]:
        raise FeedbackError("chosen and rejected must differ only in their last Assistant turn")
    return NewPreference(
        prompt=chosen[:-1], chosen=chosen[-1]["content"], rejected=rejected[-1]["content"]
    )


def parse_messages(row: dict[str, Any]) -> NewExample:
    """An SFT conversation `{"messages": [...]}` ending with an assistant turn."""
    _require(row, "messages")
    messages = clean_messages(row["messages"])
    check_conversation(messages)
    return NewExample(messages=messages)


PARSERS: dict[str, Callable[[dict[str, Any]], Row]] = {
    "trl": parse_trl,
    "hh": parse_hh,
    "messages": parse_messages,
}


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row looks like from its keys, or None when it fits none."""
    if "messages" in row:
        return "messages"
    if {"prompt", "chosen", "rejected"} <= row.keys():
        return "trl"
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if (
        isinstance(chosen, str)
        and isinstance(rejected, str)
        and chosen.lstrip().startswith("Human:")
    ):
        return "hh"
    return None


# Deeper than this is no conversation; refusing it early keeps parsing from recursing away.
MAX_DEPTH = 32


def _check_values(value: Any, depth: int = 0) -> None:
    """Refuse what no database stores as text: lone surrogates, NUL bytes, deep nesting."""
    if depth > MAX_DEPTH:
        raise FeedbackError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        check_storable(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, depth + 1)
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """One line as a JSON object (None when blank); FeedbackError says what is wrong."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FeedbackError(
            f"not UTF-8 (byte {err.start + 1}); save the file as UTF-8 JSONL"
        ) from None
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise FeedbackError(f"not valid JSON ({err.msg})") from None
    except RecursionError:
        raise FeedbackError(f"nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(row, dict):
        raise FeedbackError("each line must be a JSON object")
    _check_values(row)
    return row


# A line is one pair or conversation; past this it is not a line of a JSONL file.
MAX_LINE_BYTES = 1024 * 1024


def _open_regular(path: Path) -> int:
    """A descriptor of `path` open for reading, if it is a regular file; else FeedbackError.

    Opened non-blocking and checked on the open descriptor, so a FIFO neither hangs the
    open nor slips in between a check and the open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FeedbackError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise FeedbackError(f"{path} is a folder; give a JSONL file") from None
    except OSError as err:
        raise FeedbackError(f"{path}: cannot read it ({err.strerror}); check the path") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise FeedbackError(f"{path} is {kind}; give a JSONL file")
    os.set_blocking(fd, True)
    return fd


def _lines(
    path: Path, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-empty line; a bad line names its number."""
    fd = _open_regular(path)
    try:
        with os.fdopen(fd, "rb") as handle:
            lineno = 0
            while raw := handle.readline(max_line_bytes + 1):
                lineno += 1
                try:
                    if len(raw) > max_line_bytes and not (
                        len(raw) == max_line_bytes + 1 and raw.endswith(b"\n")
                    ):
                        raise FeedbackError(
                            f"the line is longer than {max_line_bytes // 1024} KiB "
                            "(TUNELOOP_IMPORT_MAX_LINE_KB); one pair or conversation per line"
                        )
                    row = _parse_line(raw)
                except FeedbackError as err:
                    raise FeedbackError(f"{path}:{lineno}: {err}") from None
                if row is not None:
                    yield lineno, row
    except OSError as err:
        raise FeedbackError(f"{path}: cannot read it ({err.strerror}); check the path") from None


def read_file(
    path: str | Path, fmt: str = "auto", *, max_line_bytes: int = MAX_LINE_BYTES
) -> tuple[str, list[Row]]:
    """Parse a whole file; returns (format, rows) or raises on the first bad line."""
    if fmt not in FORMATS:
        raise FeedbackError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    path = Path(path)
    rows: list[Row] = []
    chosen_fmt = None if fmt == "auto" else fmt
    for lineno, row in _lines(path, max_line_bytes):
        if fmt == "auto":
            line_fmt = detect_format(row)
            if chosen_fmt is None and line_fmt is None:
                raise FeedbackError(
                    f"{path}:{lineno}: cannot tell the format from keys {sorted(row)}; expected "
                    "'messages', 'prompt'/'chosen'/'rejected' or HH 'chosen'/'rejected'"
                )
            if chosen_fmt is None:
                chosen_fmt = line_fmt
            elif line_fmt is not None and line_fmt != chosen_fmt:
                raise FeedbackError(
                    f"{path}:{lineno}: looks like {line_fmt!r} but the file started as "
                    f"{chosen_fmt!r}; put each format in its own file"
                )
        assert chosen_fmt is not None
        try:
            rows.append(PARSERS[chosen_fmt](row))
        except FeedbackError as err:
            raise FeedbackError(f"{path}:{lineno}: {err}") from None
    if chosen_fmt is None:
        raise FeedbackError(f"{path}: the file has no rows; nothing to import")
    return chosen_fmt, rows


def import_file(
    store: Store, path: str | Path, fmt: str = "auto", *, max_line_bytes: int = MAX_LINE_BYTES
) -> ImportResult:
    """Import one JSONL file (checked whole first); rows already stored count as duplicates."""
    found, rows = read_file(path, fmt, max_line_bytes=max_line_bytes)
    result = store.add_bulk(
        preferences=[r for r in rows if isinstance(r, NewPreference)],
        examples=[r for r in rows if isinstance(r, NewExample)],
        source="import",
    )
    return ImportResult(format=found, added=result.added, duplicates=result.duplicates)


def export(
    store: Store,
    kind: str,
    out: str | Path,
    split: str = "all",
    plan: HeldoutSplit | None = None,
    *,
    raw: bool = False,
    pii_region: str = "US",
) -> int:
    """Write TRL rows ("sft", "dpo" or "kto") of `split` to `out` as JSONL; returns the row count.

    `plan`: the held-out split to use (`Store.heldout_split`); default: the plain one.
    Each row is PII-scrubbed (`feedback.pii`, phone numbers read for `pii_region`) since
    people read export files; `raw=True` writes the store's text as it is, for operators.

    The file appears complete or not at all (`feedback.atomic_write`), so a trainer
    never reads half an export.
    """
    if kind not in EXPORT_KINDS:
        raise FeedbackError(f"export kind {kind!r} is unknown; use 'sft', 'dpo' or 'kto'")
    out = Path(out)
    if out.is_dir():
        raise FeedbackError(f"{out} is a folder; give --out a file name, e.g. {out / 'x.jsonl'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise FeedbackError(f"{out.parent} is a file, not a folder; choose another --out")
    rows = {"sft": store.sft_rows, "dpo": store.dpo_rows, "kto": store.kto_rows}[kind](split, plan)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FeedbackError(f"cannot create {out.parent}: {err.strerror}") from None
    count = 0
    with atomic_writer(out) as handle:  # owner-only, like everything else tuneloop writes
        for row in rows:
            if not raw:
                row = scrub_row(row, region=pii_region)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
