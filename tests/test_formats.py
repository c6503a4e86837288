"""Importing TRL / HH-RLHF / messages JSONL, and exporting TRL SFT / DPO JSONL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from feedback.errors import FeedbackError
from feedback.formats import export, import_file
from feedback.split import HeldoutSplit
from feedback.store import Store

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'tuneloop.db'}")


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stored(store: Store) -> tuple[int, int]:
    counts = store.counts()
    return counts["preferences_total"], counts["examples"]


# Each format -------------------------------------------------------------------------


def test_trl_conversational(store: Store) -> None:
    result = import_file(store, DATA / "trl_conversational.jsonl")
    assert (result.format, result.added, result.duplicates) == ("trl", 3, 0)
    assert store.counts()["preferences_by_source"] == {"import": 3}
    rows = list(store.dpo_rows("all"))
    assert rows[0] == {
        "prompt": [
            {"role": "system", "content": "You are a careful pharmacist."},
            {"role": "user", "content": "Can I take ibuprofen with coffee?"},
        ],
        "chosen": [
            {
                "role": "assistant",
                "content": "Yes; caffeine does not interact with ibuprofen. Take it with food.",
            }
        ],
        "rejected": [{"role": "assistant", "content": "No, never."}],
    }
    assert [m["role"] for m in rows[2]["prompt"]] == ["user", "assistant", "user"]


def test_trl_plain_strings_become_messages(store: Store) -> None:
    result = import_file(store, DATA / "trl_strings.jsonl", fmt="trl")
    assert (result.format, result.added) == ("trl", 2)
    first = next(iter(store.dpo_rows("all")))
    assert first["prompt"] == [
        {"role": "user", "content": "Is it safe to split an extended-release tablet?"}
    ]
    assert first["rejected"] == [{"role": "assistant", "content": "Yes, always."}]


def test_string_and_list_rows_of_the_same_pair_are_duplicates(store: Store, tmp_path: Path) -> None:
    import_file(store, DATA / "trl_strings.jsonl")
    as_lists = write_jsonl(
        tmp_path / "lists.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Can antihistamines make me drowsy?"}],
                "chosen": [
                    {
                        "role": "assistant",
                        "content": "Older ones like diphenhydramine often do; newer ones rarely.",
                    }
                ],
                "rejected": [{"role": "assistant", "content": "Never."}],
            }
        ],
    )
    result = import_file(store, as_lists)
    assert (result.added, result.duplicates) == (0, 1)


def test_hh_multi_turn_transcript(store: Store) -> None:
    result = import_file(store, DATA / "hh.jsonl")
    assert (result.format, result.added, result.duplicates) == ("hh", 2, 0)
    first = next(iter(store.dpo_rows("all")))
    assert first["prompt"] == [
        {"role": "user", "content": "My child swallowed a vitamin gummy. Is that dangerous?"},
        {"role": "assistant", "content": "One gummy is usually harmless. How many did they take?"},
        {"role": "user", "content": "Maybe ten."},
    ]
    assert first["chosen"] == [
        {
            "role": "assistant",
            "content": "Call poison control now; iron in multivitamins can be dangerous "
            "in that amount.",
        }
    ]
    assert first["rejected"] == [
        {"role": "assistant", "content": "Vitamins are healthy, no problem."}
    ]


def test_messages_become_examples_and_in_file_duplicates_collapse(store: Store) -> None:
    result = import_file(store, DATA / "messages.jsonl")
    assert (result.format, result.added, result.duplicates) == ("messages", 2, 1)
    assert stored(store) == (0, 2)
    rows = list(store.sft_rows("all"))
    assert len(rows) == 2
    assert rows[0]["messages"][0] == {
        "role": "system",
        "content": "You are a careful pharmacist.",
    }
    assert all(row["messages"][-1]["role"] == "assistant" for row in rows)


@pytest.mark.parametrize(
    "name", ["trl_conversational.jsonl", "trl_strings.jsonl", "hh.jsonl", "messages.jsonl"]
)
def test_reimport_adds_nothing(store: Store, name: str) -> None:
    first = import_file(store, DATA / name)
    before = stored(store)
    again = import_file(store, DATA / name)
    assert again.added == 0
    assert again.duplicates == first.added + first.duplicates
    assert stored(store) == before


# Malformed files ---------------------------------------------------------------------

GOOD_TRL = {"prompt": "q?", "chosen": "good", "rejected": "bad"}
GOOD_MESSAGES = {
    "messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]
}
GOOD_HH = {
    "chosen": "\n\nHuman: q?\n\nAssistant: good",
    "rejected": "\n\nHuman: q?\n\nAssistant: bad",
}


def msgs(*pairs: tuple[str, str]) -> dict[str, object]:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


@pytest.mark.parametrize(
    ("rows", "fmt", "lineno", "message"),
    [
        ([GOOD_TRL, "{not json"], "auto", 2, "not valid JSON"),
        ([GOOD_TRL, "[1, 2]"], "auto", 2, "must be a JSON object"),
        ([GOOD_TRL, {"prompt": "q", "chosen": "x"}], "auto", 2, "missing key 'rejected'"),
        ([GOOD_TRL, {"prompt": "q", "chosen": "", "rejected": "b"}], "auto", 2, "chosen must"),
        ([GOOD_TRL, {"prompt": "q", "chosen": "same", "rejected": "same"}], "trl", 2, "identical"),
        (
            [{**GOOD_TRL, "prompt": [{"role": "robot", "content": "hi"}]}],
            "trl",
            1,
            r"prompt\[0\] has role 'robot'",
        ),
        (
            [GOOD_TRL, {**GOOD_TRL, "prompt": [{"role": "assistant", "content": "hi"}]}],
            "trl",
            2,
            "prompt must end with a user message",
        ),
        (
            [{**GOOD_TRL, "chosen": [{"role": "user", "content": "x"}]}],
            "trl",
            1,
            "exactly one assistant message",
        ),
        ([GOOD_MESSAGES, GOOD_MESSAGES, msgs(("user", "q"), ("tool", "x"))], "auto", 3, "'tool'"),
        ([GOOD_MESSAGES, msgs(("user", "q"), ("assistant", "  "))], "auto", 2, "empty content"),
        ([GOOD_MESSAGES, msgs(("user", "q"))], "messages", 2, "must end with an assistant"),
        ([GOOD_MESSAGES, msgs(("system", "s"), ("assistant", "a"))], "auto", 2, "needs a user"),
        ([GOOD_MESSAGES, {"messages": []}], "auto", 2, "non-empty list"),
        ([GOOD_MESSAGES, {"messages": ["hi"]}], "auto", 2, r"messages\[0\] must be an object"),
        (
            [GOOD_HH, {"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}],
            "auto",
            2,
            "no '\\\\n\\\\nHuman:' turn",
        ),
        (
            [GOOD_HH, {"chosen": "\n\nHuman: q", "rejected": "\n\nHuman: q\n\nAssistant: b"}],
            "auto",
            2,
            "chosen must end with an '\\\\n\\\\nAssistant:' turn",
        ),
        (
            [GOOD_HH, {"chosen": GOOD_HH["chosen"], "rejected": GOOD_HH["chosen"]}],
            "hh",
            2,
            "no divergence",
        ),
        (
            [
                GOOD_HH,
                {
                    "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
                    "rejected": "\n\nHuman: a\n\nAssistant: X\n\nHuman: c\n\nAssistant: d2",
                },
            ],
            "auto",
            2,
            "differ only in their last Assistant turn",
        ),
        (
            [GOOD_HH, {"chosen": "preamble\n\nHuman: q\n\nAssistant: a", "rejected": "x"}],
            "hh",
            2,
            "text before",
        ),
        (
            [GOOD_TRL, GOOD_MESSAGES],
            "auto",
            2,
            "looks like 'messages' but the file started as 'trl'",
        ),
        ([GOOD_HH, GOOD_TRL], "auto", 2, "looks like 'trl' but the file started as 'hh'"),
        ([{"text": "hello"}], "auto", 1, "cannot tell the format"),
    ],
)
def test_malformed_line_aborts_whole_import(
    store: Store, tmp_path: Path, rows: list[object], fmt: str, lineno: int, message: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(FeedbackError, match=message) as caught:
        import_file(store, path, fmt=fmt)
    assert str(caught.value).startswith(f"{path}:{lineno}: ")
    assert "\n" not in str(caught.value).replace("\\n", "")
    assert stored(store) == (0, 0)  # nothing half-imported


def test_blank_lines_are_skipped_but_counted(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gaps.jsonl", [GOOD_TRL, "", "  ", "{oops"])
    with pytest.raises(FeedbackError, match=f"^{path}:4: not valid JSON"):
        import_file(store, path)


def test_file_level_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(FeedbackError, match="no such file"):
        import_file(store, tmp_path / "missing.jsonl")
    with pytest.raises(FeedbackError, match="is a folder"):
        import_file(store, tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(FeedbackError, match="has no rows"):
        import_file(store, empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(FeedbackError, match="not UTF-8"):
        import_file(store, latin)
    with pytest.raises(FeedbackError, match="format 'csv' is unknown"):
        import_file(store, DATA / "hh.jsonl", fmt="csv")
    with pytest.raises(FeedbackError, match="missing key 'messages'"):
        import_file(store, DATA / "hh.jsonl", fmt="messages")


# Export ------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def filled(store: Store, tmp_path: Path) -> Store:
    """60 imported pairs, 60 imported conversations, and one chat with a tie."""
    pairs = [
        {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(60)
    ]
    import_file(store, write_jsonl(tmp_path / "pairs.jsonl", pairs))
    convs = [msgs(("user", f"topic {i}"), ("assistant", f"answer {i}")) for i in range(60)]
    import_file(store, write_jsonl(tmp_path / "convs.jsonl", convs))
    user = store.add_user(name="ann", role="expert", password="pw")
    conversation = store.start_conversation(user_id=user.id, title="tie")
    prompt = [{"role": "user", "content": "tie question"}]
    ids = [
        store.add_response(
            conversation_id=conversation,
            prompt=prompt,
            content=text,
            model="m",
            adapter_version=None,
            params={},
            latency_ms=1,
            kind=kind,
        )
        for text, kind in (("left", "reply"), ("right", "candidate"))
    ]
    comparison = store.add_comparison(
        user_id=user.id,
        original_response_id=ids[0],
        candidate_response_id=ids[1],
        original_is_a=True,
    )
    store.decide_comparison(comparison_id=comparison, user_id=user.id, choice="tie")
    return store


def key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_export_splits_partition_all(filled: Store, tmp_path: Path, kind: str) -> None:
    exported = {}
    for split in ("all", "train", "heldout"):
        out = tmp_path / "out" / f"{kind}-{split}.jsonl"
        count = export(filled, kind, out, split=split)
        rows = read_jsonl(out)
        assert count == len(rows)
        assert rows == list(filled.sft_rows(split) if kind == "sft" else filled.dpo_rows(split))
        exported[split] = rows
    assert len(exported["all"]) == 60  # the tie is not a DPO pair nor an SFT row
    train = {key(r) for r in exported["train"]}
    heldout = {key(r) for r in exported["heldout"]}
    assert train and heldout and not train & heldout
    assert train | heldout == {key(r) for r in exported["all"]}
    for split in ("train", "heldout"):
        for row in exported[split]:
            prompt = row["prompt"] if kind == "dpo" else row["messages"][:-1]
            assert HeldoutSplit().side(prompt) == split
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{kind}-{s}.jsonl" for s in ("all", "heldout", "train")
    )  # no temp files left behind


def test_dpo_export_excludes_ties_and_has_trl_shape(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "dpo.jsonl"
    export(filled, "dpo", out)
    rows = read_jsonl(out)
    assert all(set(row) == {"prompt", "chosen", "rejected"} for row in rows)
    assert not any(row["prompt"][-1]["content"] == "tie question" for row in rows)
    assert filled.counts()["preferences_by_source"] == {"import": 60, "chat-compare": 1}


def test_export_replaces_an_existing_file_and_rejects_bad_arguments(
    filled: Store, tmp_path: Path
) -> None:
    out = tmp_path / "sft.jsonl"
    out.write_text("stale\n", encoding="utf-8")
    assert export(filled, "sft", out) == 60
    assert "stale" not in out.read_text(encoding="utf-8")
    with pytest.raises(FeedbackError, match="export kind .orpo. is unknown"):
        export(filled, "orpo", tmp_path / "x.jsonl")
    with pytest.raises(FeedbackError, match="split 'dev' is unknown"):
        export(filled, "dpo", tmp_path / "x.jsonl", split="dev")
    assert not (tmp_path / "x.jsonl").exists()
