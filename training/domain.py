"""A domain folder (TUNELOOP_DATA_DIR): what each file is for, and `tuneloop init`'s skeleton.

Only `system_prompt.md` is needed; every other file adds a check or some data to a round and
is skipped, with a line in the round's report, when it is not there. The README's "Bring
your own domain" section is written from this table; keep the two in step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class DomainError(Exception):
    """A domain folder that cannot be written (files already there, not a directory)."""


@dataclass(frozen=True)
class DomainFile:
    """One file of a domain folder: what it does, and what a round lacks without it."""

    name: str
    purpose: str
    without: str  # what a round cannot do when the file is missing ("" = nothing)


SYSTEM_PROMPT = DomainFile(
    "system_prompt.md",
    "the system prompt of every chat, generation, eval and training row (required)",
    "",
)
SEEDS = DomainFile(
    "seed_sft.jsonl",
    'seed conversations {"messages": [...]} trained on in every round, split like feedback',
    "no seed examples: SFT trains on the store's feedback only",
)
REPLAY = DomainFile(
    "replay_prompts.jsonl",
    "general prompts the bare base answers each round; its answers join SFT (against forgetting)",
    "no replay: nothing holds the round to the base model's general answers",
)
RUBRIC = DomainFile(
    "rubric.json",
    "checks of the house style (patterns, word limit, {field} placeholders): the round's "
    "rubric_pass and the `rubric` scorer",
    "rubric_pass not measured: the round's gate cannot use the rubric",
)
GENERAL = DomainFile(
    "general_checks.jsonl",
    "general instructions with reference answers and a must_match pattern: the regression "
    "check outside the domain (general_loss, general_pass)",
    "general_loss and general_pass not measured: no regression check outside the domain",
)
GUIDELINES = DomainFile(
    "guidelines.md",
    "what a good reply is, for experts; shown to annotators in Argilla",
    "",
)
FILES = (SYSTEM_PROMPT, SEEDS, REPLAY, RUBRIC, GENERAL, GUIDELINES)


# -- the skeleton `tuneloop init DIR` writes ----------------------------------------------------
EXAMPLE = ".example"  # optional files are written inactive: rename to use them

_SYSTEM_PROMPT_TEXT = """\
You are the assistant of our support team. Answer the customer's question clearly and in a
few sentences. When you do not know, say so and tell them how to reach a person.
"""

_SEEDS_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Hi, I'm Sam. How do I reset my password?"},
            {
                "role": "assistant",
                "content": "Hi Sam, open Settings > Account > Reset password and follow the "
                "link we email you. — Support",
            },
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Can I get a refund after 30 days?"},
            {
                "role": "assistant",
                "content": "Refunds are possible within 30 days of purchase; after that we "
                "can offer store credit. — Support",
            },
        ]
    },
]
_REPLAY_ROWS = [
    {"prompt": "What is the capital of France?"},
    {"prompt": "Write a haiku about autumn."},
    {"prompt": "Explain what a prime number is in one sentence."},
]
_GENERAL_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "What is 12 times 12?"},
            {"role": "assistant", "content": "12 times 12 is 144."},
        ],
        "must_match": "\\b144\\b",
    },
    {
        "messages": [
            {"role": "user", "content": "Which planet is closest to the sun?"},
            {"role": "assistant", "content": "Mercury is the closest planet to the sun."},
        ],
        "must_match": "mercury",
    },
]
_RUBRIC = {
    "name": "house-style",
    "description": "Each check: must_match / must_not_match (a regular expression) or "
    "max_words; ignore_case optional. {field} is filled from the scored row's field of that "
    "name (an eval row's \"customer\", \"policy\", ...); a check whose field the row lacks "
    "does not apply to it. In a round's held-out prompts only {customer} is known (from "
    "self-introductions such as \"I'm Sam\"). Write literal braces doubled: \\\\d{{2}}.",
    "checks": [
        {"name": "greets_by_name", "must_match": "^\\W*(hi|hello)\\s+{customer}\\b",
         "ignore_case": True},
        {"name": "signs_off", "must_match": "— Support\\s*$"},
        {"name": "no_markup", "must_not_match": "<[a-zA-Z/][^>]*>"},
        {"name": "short", "max_words": 120},
    ],
}  # fmt: skip
_GUIDELINES_TEXT = """\
# What a good reply is

- Greets the customer by name when they gave one.
- Answers the question that was asked, correctly, in a few sentences.
- Says so when it does not know; never invents a policy.
- Ends with "— Support".
"""


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _readme() -> str:
    lines = [
        "# This domain folder",
        "",
        "Point TUNELOOP_DATA_DIR here. Only system_prompt.md is needed. The *.example files",
        "are inactive: edit one and drop `.example` from its name to use it. A round's",
        "report lists the checks it could not run for lack of a file.",
        "",
    ]
    for f in FILES:
        lines.append(f"- `{f.name}`: {f.purpose}.")
        if f.without:
            lines.append(f"  Without it: {f.without}.")
    lines += [
        "- `eval_set.jsonl`: an eval set (used only where you name it: `tuneloop eval --set`,",
        '  TUNELOOP_GATE_EVAL_SETS). Rows: {"prompt": ...} plus any fields your scorers and',
        '  rubric placeholders read ("reference" for the exact scorer).',
        "",
    ]
    return "\n".join(lines)


def skeleton() -> dict[str, str]:
    """File name -> content of the skeleton domain folder."""
    return {
        SYSTEM_PROMPT.name: _SYSTEM_PROMPT_TEXT,
        "README.md": _readme(),
        SEEDS.name + EXAMPLE: _jsonl(_SEEDS_ROWS),
        REPLAY.name + EXAMPLE: _jsonl(_REPLAY_ROWS),
        RUBRIC.name + EXAMPLE: json.dumps(_RUBRIC, indent=2, ensure_ascii=False) + "\n",
        GENERAL.name + EXAMPLE: _jsonl(_GENERAL_ROWS),
        GUIDELINES.name + EXAMPLE: _GUIDELINES_TEXT,
        "eval_set.jsonl" + EXAMPLE: _jsonl(
            [
                {"prompt": "Hi, I'm Ana. Can I get a refund after 30 days?", "customer": "Ana"},
                {"prompt": "How do I reset my password?", "reference": "See Settings."},
            ]
        ),
    }


def write_skeleton(folder: Path) -> list[Path]:
    """Write the skeleton into `folder` (created if needed); refuses, writing nothing, when
    any of its files is already there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DomainError(f"{folder} exists and is not a directory")
    files = skeleton()
    there = sorted(name for name in files if (folder / name).exists())
    if there:
        raise DomainError(
            f"{folder} already has {', '.join(there)}: nothing was written "
            "(move them away or pick another folder)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = folder / name
        with open(path, "x", encoding="utf-8") as handle:  # never replaces a file
            handle.write(text)
        written.append(path)
    return written


def not_run(
    *,
    seed_file: Path | None,
    replay_file: Path | None,
    rubric_file: Path | None,
    general_file: Path | None,
    generate: bool = True,
) -> list[str]:
    """What a round with these files could not do, one line each, naming the missing file."""
    out = []
    for domain_file, path in (
        (SEEDS, seed_file),
        (REPLAY, replay_file),
        (RUBRIC, rubric_file),
        (GENERAL, general_file),
    ):
        if path is None or not Path(path).is_file():
            where = path if path is not None else domain_file.name
            out.append(f"{domain_file.without} (no {where})")
    if not generate:
        out.append("rubric_pass and general_pass not measured (TUNELOOP_EVAL_GENERATE=false)")
    return out
