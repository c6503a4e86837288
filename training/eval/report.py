"""A round's report: report.json (everything), report.md (a summary) and PNG plots.

Plots (matplotlib, Agg backend, no display needed):
  loss.png     training loss per step, one line per stage, from metrics.jsonl, and the loss
               on each stage's validation split where it had one (dashed)
  history.png  held-out preference accuracy, loss and rubric pass rate of every finished
               round's candidate so far (this one included), against its serving version
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_METRICS = (
    "reply_match",
    "pref_acc",
    "kto_acc",
    "heldout_loss",
    "rubric_pass",
    "general_loss",
    "general_pass",
)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def write_report(
    folder: Path, *, result: dict[str, Any], snapshot: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    """Write report.json, report.md, loss.png and history.png into the round's `folder`."""
    folder = Path(folder)
    report = {
        "round": folder.name,
        "result": result,
        "snapshot": {k: v for k, v in snapshot.items() if k != "preference_ids"},
        "hyperparameters": config,
        "not_run": not_run(config, snapshot),
        "plots": ["loss.png", "history.png"],
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(_markdown(report), encoding="utf-8")
    plot_losses(folder / "metrics.jsonl", folder / "loss.png")
    plot_history(folder.parent, folder / "history.png")
    return report


def not_run(config: dict[str, Any], snapshot: dict[str, Any]) -> list[str]:
    """The checks and data a round went without, and why: a domain file it lacks
    (`training.domain`), generation turned off, or nothing held out to measure on."""
    from training.domain import not_run as files_not_run

    def path(value: Any) -> Path | None:
        return Path(value) if value not in (None, "", "None") else None

    evaluation = config.get("eval") or {}
    out = files_not_run(
        seed_file=path(config.get("seed_file")),
        replay_file=path(config.get("replay_file")),
        rubric_file=path(evaluation.get("rubric_file")),
        general_file=path(evaluation.get("general_file")),
        generate=bool(evaluation.get("generate", True)),
    )
    counts = snapshot.get("counts") or {}
    if not counts.get("dpo_heldout"):
        out.append("pref_acc not measured: no held-out preference pairs")
    if not counts.get("sft_heldout"):
        out.append(
            "heldout_loss not measured: no held-out answer people wrote (corrections, "
            "imported or seed conversations)"
        )
    if not evaluation.get("generate", True):
        out.append("reply_match not measured: generation is off (TUNELOOP_EVAL_GENERATE)")
    return out


def _markdown(report: dict[str, Any]) -> str:
    from training import early_stopping
    from training.continuation import describe

    result = report["result"]
    snap = report["snapshot"]
    metrics = result.get("metrics") or {}
    lines = [
        f"# Training round {report['round']}",
        "",
        f"- outcome: **{result['status']}**"
        + (f" (version `{result['version']}`)" if result.get("version") else ""),
        f"- candidate stage: {result.get('candidate_stage') or '-'}",
        f"- serving before: {result.get('serving_before') or 'bare base'}; "
        f"after: {result.get('serving_after') or 'bare base'}",
        f"- data snapshot: `{str(snap.get('hash', ''))[:16]}`, rows {snap.get('counts')}",
        f"- mode: {describe(snap.get('continuation'))}",
        f"- curation: {snap.get('curation')}",
    ]
    if result.get("decision"):
        lines.insert(3, f"- gate decision on that stage: **{result['decision']}**")
        objectives = ", ".join(result.get("objectives") or []) or "none measured"
        lines.insert(4, f"- objective (what may promote): {objectives}")
    if result.get("training"):
        lines += ["", "## Training stages", ""] + [
            f"- {stage}: {early_stopping.describe(summary)}"
            for stage, summary in result["training"].items()
        ]
    if report.get("not_run"):
        lines += ["", "## Checks not run", ""] + [f"- {line}" for line in report["not_run"]]
    if result.get("reasons"):
        title = "Why" if result["status"] != "promoted" else "Why the other stages were dropped"
        lines += ["", f"## {title}", ""] + [f"- {r}" for r in result["reasons"]]
    for stage, decision in (result.get("gate") or {}).items():
        lines += [
            "",
            f"## Gate: {stage} vs serving — {decision['decision']}",
            "",
            "Paired over the same items; 95% interval of the difference (candidate - serving)"
            " by paired bootstrap. Margin: the gain required (positive) or loss tolerated"
            " (negative) in the metric's better direction. Only an objective promotes (Holm"
            " across the round's stages and objectives); guards only block, and a soft guard"
            " (graded by the feedback itself) cannot veto objectives shown better"
            " (docs/gate-rule.md).",
            "",
            "| metric | role | items | serving | candidate | difference [95% interval] | margin "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in decision["comparisons"]:
            interval = (
                f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
                if c["diff"] is not None
                else "-"
            )
            margin = "-" if c["margin"] is None else f"{c['margin']:+g}"
            verdict = c["verdict"] + (
                f" (~{c['items_needed']} items needed)" if c.get("items_needed") else ""
            )
            lines.append(
                f"| {c['name']} | {c.get('role', '-')} | {c['n']} | {_fmt(c['serving'])} | "
                f"{_fmt(c['candidate'])} | {interval} | {margin} | {verdict} |"
            )
        lines += [f"- {note}" for note in decision.get("notes") or []]
    if metrics:
        names = list(metrics)
        lines += ["", "## Held-out metrics", "", "| metric | " + " | ".join(names) + " |"]
        lines.append("|---" * (len(names) + 1) + "|")
        for key in _METRICS:
            lines.append(
                f"| {key} | " + " | ".join(_fmt(metrics[n].get(key)) for n in names) + " |"
            )
        samples = metrics.get(result.get("candidate_stage") or "", {}).get("samples") or []
        if samples:
            lines += ["", "## Sample replies of the candidate", ""]
            for s in samples[:3]:
                reply = str(s["reply"]).replace("\n", " ")[:300]
                lines.append(f"- **{s['prompt'][:120]}** → {reply} (rubric: {s['passes']})")
    lines += ["", "Plots: loss.png (training loss), history.png (metrics across rounds).", ""]
    return "\n".join(lines)


def plot_losses(metrics_file: Path, out: Path) -> None:
    """Loss per step for each stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "loss" in row:
                series.setdefault(row["stage"], []).append((row["step"], row["loss"]))
            if "eval_loss" in row:
                name = f"{row['stage']} validation"
                series.setdefault(name, []).append((row["step"], row["eval_loss"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage, points in series.items():
        style = "--" if stage.endswith(" validation") else "-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=stage, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_history(rounds_dir: Path, out: Path) -> None:
    """Candidate vs serving metrics for every round that has a report, oldest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for report in sorted(Path(rounds_dir).glob("r*/report.json")):
        data = json.loads(report.read_text(encoding="utf-8"))
        result = data.get("result", {})
        metrics = result.get("metrics") or {}
        stage = result.get("candidate_stage")
        if stage in metrics:
            rows.append((data["round"][:5], metrics[stage], metrics.get("serving", {})))
    keys = ("pref_acc", "heldout_loss", "rubric_pass")
    fig, axes = plt.subplots(1, len(keys), figsize=(10, 3.2))
    for ax, key in zip(axes, keys, strict=True):
        xs = list(range(len(rows)))
        ax.plot(xs, [r[1].get(key) for r in rows], marker="o", label="candidate")
        ax.plot(xs, [r[2].get(key) for r in rows], marker="x", linestyle="--", label="serving")
        ax.set_xticks(xs, [r[0] for r in rows], rotation=45)
        ax.set_title(key)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
