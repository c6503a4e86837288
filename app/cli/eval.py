"""`tuneloop generate` and `tuneloop eval`: batch replies and scored side-by-side comparisons.

The same eval sets gate every training round (TUNELOOP_GATE_EVAL_SETS): the round builds
that from Settings itself (`RoundConfig.from_settings`), so nothing here decides promotion.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import JsonOpt, batch_generation, emit, open_settings
from app.config import Settings

AdapterOpt = Annotated[
    str, typer.Option("--adapter", help="base | CURRENT | a version name (CURRENT: as served).")
]
MaxNewOpt = Annotated[
    int | None,
    typer.Option("--max-new-tokens", min=1, help="Token budget per reply (default: setting)."),
]
TempOpt = Annotated[
    float | None,
    typer.Option("--temperature", min=0.0, help="0 = greedy (default: setting)."),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Rows per batch (default: per machine)."),
]


def register(app: typer.Typer) -> None:
    """Add `generate` and `eval` to the main `tuneloop` app."""
    app.command("generate")(generate)
    app.command("eval")(eval_)


def generate(
    in_file: Annotated[Path, typer.Option("--in", help="JSONL of {messages} or {prompt} rows.")],
    out_file: Annotated[Path, typer.Option("--out", help="JSONL to write (resumed if there).")],
    adapter: AdapterOpt = "CURRENT",
    max_new_tokens: MaxNewOpt = None,
    temperature: TempOpt = None,
    batch_size: BatchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer every row of a JSONL file with one adapter version, in batches, resumably.

    Each output row is the input row plus "reply", "adapter" (the version that answered,
    "base" for none) and "latency_ms" (the row's share of its batch's time). Rows already
    in --out are skipped, so an interrupted run continues where it stopped.
    """
    from training.eval.evalsets import resolve_targets
    from training.eval.generate import load_for_generation
    from training.eval.prompt_files import generate_file, read_rows
    from training.registry import Registry

    settings = open_settings()
    read_rows(in_file)  # a malformed line fails here, before any model is loaded
    target = resolve_targets([adapter], Registry(settings.adapters_dir))[0]

    def load() -> tuple[Any, Any]:
        return load_for_generation(
            _model_dir(settings),
            target.adapter_dir,
            load_in_4bit=settings.load_in_4bit,
            bf16=settings.infer_bf16,
        )

    summary = generate_file(
        load,
        in_file,
        out_file,
        adapter=target.label,
        system_prompt=settings.system_prompt(),
        params=batch_generation(
            settings, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size
        ),
        progress=sys.stderr.isatty() or not as_json,
    )
    rate = summary["replies_per_s"]
    text = (
        f"{summary['generated']} replies from {summary['adapter']} written to {out_file} "
        f"({summary['skipped']} already there)" + (f", {rate:.2f} replies/s." if rate else ".")
    )
    emit(as_json, summary, text)


def eval_(
    set_file: Annotated[Path, typer.Option("--set", help="Eval set: JSONL of prompt rows.")],
    scorer: Annotated[
        str | None,
        typer.Option(
            "--scorer",
            help="Comma-separated: exact, json, rubric, pairwise (against the first adapter, "
            "judged by TUNELOOP_JUDGE_MODEL), FILE.py:FUNCTION, module:FUNCTION, or auto "
            "(default: TUNELOOP_EVAL_SCORER).",
        ),
    ] = None,
    rubric: Annotated[
        Path | None,
        typer.Option("--rubric", help="Rubric file for the rubric scorer (default: data/)."),
    ] = None,
    adapters: Annotated[
        str, typer.Option("--adapters", help="Comma-separated: base, CURRENT, versions.")
    ] = "base,CURRENT",
    max_new_tokens: MaxNewOpt = None,
    batch_size: BatchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer an eval set with each adapter, score the replies, print them side by side.

    Replies are cached per (model, adapter version, prompts, generation settings), so a
    rerun only generates for what changed. Results are recorded with the versions (and,
    for the bare base, under HOME/evals/base/); a failing scorer records nothing.
    """
    from training.eval.eval_results import format_table, record
    from training.eval.evalsets import load_set, resolve_targets
    from training.eval.evalsets import run_eval as run
    from training.eval.scorers import resolve_scorers
    from training.registry import Registry

    settings = open_settings()
    evalset = load_set(set_file)
    scorers = resolve_scorers(
        scorer or settings.eval_scorer,
        evalset.rows,
        rubric_path=rubric or settings.rubric_file,
        judge=judge(settings),
    )
    registry = Registry(settings.adapters_dir)
    targets = resolve_targets(adapters.split(","), registry)
    result = run(
        evalset,
        targets,
        scorers,
        model_dir=_model_dir(settings),
        system_prompt=settings.system_prompt(),
        cache_dir=settings.evals_dir / "cache",
        params=batch_generation(settings, max_new_tokens=max_new_tokens, batch_size=batch_size),
        load_in_4bit=settings.load_in_4bit,
        bf16=settings.infer_bf16,
        progress=not as_json or sys.stderr.isatty(),
    )
    record(result, registry, settings.evals_dir)
    emit(as_json, result.as_dict(), format_table(result))


def judge(settings: Settings) -> Any:
    """The `pairwise` scorer's judge from TUNELOOP_JUDGE_MODEL (None when unset).

    "embedded" (or "default") is the built-in SmolLM2; anything else a model directory or
    .gguf file. It is located (and a GGUF converted) only when pairwise is asked for.
    """
    from training.eval.scorers import Judge

    if settings.judge_model is None:
        return None
    name = None if settings.judge_model in ("embedded", "default") else settings.judge_model

    def model_dir() -> Path:
        from app.serving.modelfiles import resolve_model_dir

        return resolve_model_dir(name, settings.models_dir, progress=True)

    return Judge(
        model_dir=model_dir,
        system_prompt=settings.system_prompt(),
        batch_size=settings.generate_batch_size or 8,
        bf16=settings.infer_bf16,
    )


def _model_dir(settings: Settings) -> Path:
    from app.serving.modelfiles import resolve_model_dir

    return resolve_model_dir(settings.model, settings.models_dir, progress=True)
