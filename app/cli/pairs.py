"""`tuneloop pairs generate --from ADAPTER --best-of N`: on-policy pairs for annotators.

The command itself lives with the other `pairs` options in app/cli/argilla.py; this is its
best-of branch: read the prompt rows, sample N replies each from the named adapter, score
them with the configured scorers and queue the best and the worst (training/eval/best_of.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.cli.common import chat_sampling
from app.config import Settings


class BestOfError(Exception):
    """A best-of request that cannot run as asked; the message says what to change."""


def prompt_rows(path: Path) -> list[dict[str, Any]]:
    """Rows from a .jsonl file (`{"prompt"}` or `{"messages"}`, other fields kept for the
    scorers, e.g. `reference` or the rubric's `{policy}`), or one prompt a line."""
    from training.eval.prompt_files import read_rows

    if not path.is_file():
        raise BestOfError(f"{path} does not exist; give a prompts file")
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
) -> tuple[dict[str, Any], str]:
    """Sample, score, pick and queue; returns (the --json payload, the text summary)."""
    from app.serving.modelfiles import resolve_model_dir
    from training.eval import best_of
    from training.eval.evalsets import resolve_targets
    from training.eval.prompt_files import row_conversation
    from training.eval.scorers import resolve_scorers
    from training.registry import Registry

    if n < 2:
        raise BestOfError(f"--best-of needs at least 2 samples per prompt, got {n}")
    if settings.temperature <= 0:
        raise BestOfError(
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
        "queued": queued,
        "ties": skipped["tie"],
        "unscored": skipped["unscored"],
        "identical": skipped["identical"],
        "items": [p.as_dict() for p in picks],
    }
    text = (
        f"Sampled {n} replies to each of {len(rows)} prompts from {target.label}, scored by "
        f"{', '.join(names)}: {paired} prompts gave a best/worst pair "
        f"({queued} newly queued), {skipped['tie']} tied, {skipped['unscored']} unscored. "
        "Push them with `tuneloop argilla sync`."
    )
    return payload, text
