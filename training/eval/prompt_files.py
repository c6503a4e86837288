"""Files of prompts (`tuneloop generate`'s input, JSONL): reading and checking their rows, the
conversation each row asks to answer, and answering a whole file resumably."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feedback.atomic_write import atomic_writer
from training.eval.generate import ROLES, GenerationError, GenParams, generate_replies

ADDED_KEYS = ("reply", "adapter", "latency_ms")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a prompts file, checked: `{"messages": [...]}` ending with a user turn, or
    `{"prompt": "...", "system"?: "..."}`. Any problem is a GenerationError naming the line,
    raised before anything is generated. Blank lines are skipped.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise GenerationError(f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise GenerationError(f"{path} is not UTF-8 text: {err}") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as err:
            raise GenerationError(f"{where}: not valid JSON ({err})") from err
        problem = _row_problem(row)
        if problem:
            raise GenerationError(f"{where}: {problem}")
        rows.append(row)
    if not rows:
        raise GenerationError(f"{path} holds no rows")
    return rows


def row_conversation(row: dict[str, Any], system_prompt: str) -> list[dict[str, str]]:
    """The messages a row asks to answer, with `system_prompt` when the row brings none."""
    if "messages" in row:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if messages[0]["role"] != "system" and system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages
    system = row["system"] if "system" in row else system_prompt
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": row["prompt"]}]


def generate_file(
    load: Callable[[], tuple[Any, Any]],
    in_path: Path,
    out_path: Path,
    *,
    adapter: str,
    system_prompt: str,
    params: GenParams,
    progress: bool = False,
) -> dict[str, Any]:
    """Answer every row of `in_path` into `out_path` (row + reply, adapter, latency_ms).

    Resumable: rows whose answer is already in `out_path` are skipped (matched by their
    content, so a reordered or extended input still resumes), answers are appended as
    each batch finishes, and the file is rewritten in input order once all are done.
    `load()` gives (model, tokenizer) and is called only when something is left to do.
    `latency_ms` is the row's share of its batch's generation time.
    """
    rows = read_rows(in_path)
    done = _read_done(out_path, adapter)
    answers: list[dict[str, Any] | None] = [None] * len(rows)
    pool: dict[str, list[dict[str, Any]]] = {}
    for row in done:
        pool.setdefault(_row_key(row), []).append(row)
    for i, row in enumerate(rows):
        matches = pool.get(_row_key(row))
        if matches:
            answers[i] = matches.pop()
    stale = sum(len(v) for v in pool.values())
    if stale:
        raise GenerationError(
            f"{out_path} holds {stale} answered rows that are not in {in_path}: "
            "write to a new --out file"
        )
    todo = [i for i, answer in enumerate(answers) if answer is None]
    busy = [0.0]  # seconds spent generating (model loading not included)
    if todo:
        model, tokenizer = load()
        _write_in_order(out_path, done)  # drops a torn last line before appending
        with open(out_path, "a", encoding="utf-8") as out:

            def save(indices: list[int], replies: list[str], seconds: float) -> None:
                busy[0] += seconds
                share = round(seconds * 1000 / len(indices), 1)
                for k, reply in zip(indices, replies, strict=True):
                    i = todo[k]
                    answers[i] = {
                        **rows[i],
                        "reply": reply,
                        "adapter": adapter,
                        "latency_ms": share,
                    }
                    out.write(json.dumps(answers[i], ensure_ascii=False) + "\n")
                out.flush()

            generate_replies(
                model,
                tokenizer,
                [row_conversation(rows[i], system_prompt) for i in todo],
                max_new_tokens=params.max_new_tokens,
                temperature=params.temperature,
                batch_size=params.batch_size,
                progress=progress,
                on_batch=save,
            )
    seconds = busy[0]
    _write_in_order(out_path, [a for a in answers if a is not None])
    return {
        "in": str(in_path),
        "out": str(out_path),
        "adapter": adapter,
        "rows": len(rows),
        "generated": len(todo),
        "skipped": len(rows) - len(todo),
        "seconds": round(seconds, 2),
        "replies_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
    }


def _row_problem(row: object) -> str | None:
    """Why `row` is not a prompts-file row, or None when it is one."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "messages" in row and "prompt" in row:
        return 'has both "messages" and "prompt"; give one'
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return '"messages" must be a non-empty list'
        for k, m in enumerate(messages, 1):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return f"message {k} needs a role ({', '.join(ROLES)})"
            if not isinstance(m.get("content"), str):
                return f"message {k} needs string content"
        if messages[-1]["role"] != "user":
            return "the conversation must end with a user message"
        return None
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            return '"prompt" must be a non-empty string'
        if "system" in row and not isinstance(row["system"], str):
            return '"system" must be a string'
        return None
    return 'needs "messages" (a conversation) or "prompt" (a string)'


def _row_key(row: dict[str, Any]) -> str:
    """A row's identity for resuming: its content without what `generate` adds."""
    return json.dumps({k: v for k, v in row.items() if k not in ADDED_KEYS}, sort_keys=True)


def _read_done(out_path: Path, adapter: str) -> list[dict[str, Any]]:
    """Rows already answered in `out_path`; a torn last line (killed mid-write) is dropped."""
    try:
        text = out_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                break  # the interrupted write: that row is generated again
            raise GenerationError(
                f"{out_path}, line {number}: not valid JSON; write to a new --out file"
            ) from None
        if not isinstance(row, dict) or "reply" not in row:
            raise GenerationError(f"{out_path}, line {number}: not an answered row")
        if row.get("adapter") != adapter:
            raise GenerationError(
                f"{out_path} holds replies from adapter {row.get('adapter')!r}, not "
                f"{adapter!r}: write to a new --out file"
            )
        rows.append(row)
    return rows


def _write_in_order(out_path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace `out_path` atomically with `rows`, one JSON object a line."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out_path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
