"""`tuneloop pairs generate --from ADAPTER --best-of N`: on-policy pairs for annotators, or
(`--to round`) for the next round straight away.

The command itself lives with the other `pairs` options in app/cli/argilla.py; this is its
best-of branch: read the prompt rows, sample N replies each from the named adapter, score
them with the configured scorers and queue the best and the worst for annotators, or store
them as `best-of` pairs the next round trains on (training/eval/best_of.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.cli.common import chat_sampling
from app.config import Settings


class PairsError(Exception):
    """A `pairs generate` request that cannot run as asked; the message says what to change."""


def read_prompts(path: Path) -> list[list[dict[str, str]]]:
    """Prompts from a .jsonl file ({"prompt": str} or {"messages": [...]}) or one per line."""
    if not path.is_file():
        raise PairsError(f"{path} does not exist; give a prompts file")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append([{"role": "user", "content": line.strip()}])
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PairsError(f"{path}:{number}: not JSON ({err.msg})") from None
        if isinstance(row.get("messages"), list):
            prompts.append([m for m in row["messages"] if m.get("role") != "system"])
        elif isinstance(row.get("prompt"), str):
            prompts.append([{"role": "user", "content": row["prompt"]}])
        else:
            raise PairsError(f'{path}:{number}: needs "prompt" or "messages"')
    return prompts


def prompt_rows(path: Path) -> list[dict[str, Any]]:
    """Rows from a .jsonl file (`{"prompt"}` or `{"messages"}`, other fields kept for the
    scorers, e.g. `reference` or the rubric's `{policy}`), or one prompt a line."""
    from training.eval.prompt_files import read_rows

    if not path.is_file():
        raise PairsError(f"{path} does not exist; give a prompts file")
    if path.suffix == ".jsonl":
        return read_rows(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{"prompt": line.strip()} for line in lines if line.strip()]


def best_of_pairs(
    settings: Settings,
    store: Any,
    *,
    prompts: Path,
    limit: int | None,
    source: str,
    n: int,
    scorer: str | None,
    to: str = "argilla",
) -> tuple[dict[str, Any], str]:
    """Sample, score, pick and queue (`to` "argilla") or store for the next round (`to`
    "round"); returns (the --json payload, the text summary)."""
    from app.serving.modelfiles import resolve_model_dir
    from training.eval import best_of
    from training.eval.evalsets import resolve_targets
    from training.eval.prompt_files import row_conversation
    from training.eval.scorers import resolve_scorers
    from training.registry import Registry

    if to not in ("argilla", "round"):
        raise PairsError(f"--to takes 'argilla' (annotators rank) or 'round', not {to!r}")
    if n < 2:
        raise PairsError(f"--best-of needs at least 2 samples per prompt, got {n}")
    if settings.temperature <= 0:
        raise PairsError(
            "--best-of samples replies, but TUNELOOP_TEMPERATURE is 0 (greedy: every sample "
            "the same); set it above 0"
        )
    rows = prompt_rows(prompts)[: limit if limit else None]
    spec = scorer or settings.eval_scorer
    best_of.check_scorers(spec)
    scorers = resolve_scorers(spec, rows, rubric_path=settings.rubric_file)
    target = resolve_targets([source], Registry(settings.adapters_dir))[0]
    model_dir = resolve_model_dir(settings.model, settings.models_dir, progress=True)
    conversations = [row_conversation(r, settings.system_prompt()) for r in rows]
    samples = best_of.sample(
        model_dir,
        target.adapter_dir,
        conversations,
        n,
        sampling=chat_sampling(settings),
        batch_size=settings.generate_batch_size,
        load_in_4bit=settings.load_in_4bit,
        bf16=settings.infer_bf16,
    )
    picks = best_of.pick_pairs(rows, conversations, samples, scorers)
    if to == "round":
        queued = best_of.keep_for_round(store, picks)
    else:
        queued = best_of.queue(store, picks, adapter=target.label, model=model_dir.name, n=n)
    paired = sum(p.best is not None for p in picks)
    skipped = {w: sum(p.why_not == w for p in picks) for w in ("tie", "unscored", "identical")}
    names = [s.name for s in scorers]
    payload = {
        "prompts": len(rows),
        "from": target.label,
        "best_of": n,
        "scorers": names,
        "pairs": paired,
        "to": to,
        "queued": queued,
        "ties": skipped["tie"],
        "unscored": skipped["unscored"],
        "identical": skipped["identical"],
        "items": [p.as_dict() for p in picks],
    }
    text = (
        f"Sampled {n} replies to each of {len(rows)} prompts from {target.label}, scored by "
        f"{', '.join(names)}: {paired} prompts gave a best/worst pair "
        f"({queued} new), {skipped['tie']} tied, {skipped['unscored']} unscored. "
        + (
            "They are stored as best-of pairs: the next round trains on them."
            if to == "round"
            else "Push them with `tuneloop argilla sync`."
        )
    )
    return payload, text
