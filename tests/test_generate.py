"""`tuneloop generate` and training/eval/generate.py on the tiny model.

Greedy decoding makes a reply a pure function of (prompt, version), so batching, resuming
and the CLI are checked by comparing texts with replies generated another way: one at a
time, or by the chat server's own engine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.cli import run_cli
from tests.tiny import tiny_registry
from training.eval.generate import GenerationError, GenParams, generate_replies, load_for_generation
from training.eval.prompt_files import generate_file, read_rows, row_conversation
from training.registry import Registry

MAX_NEW = 24
QUESTIONS = [
    "How do I water tomatoes?",
    "Hi",
    "What is the capital of France? Tell me about bread and soup please.",
    "How many legs does a spider have?",
    "Which month comes after June?",
    "I would like a recipe for soup.",
    "A bicycle chain needs oil",
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows]


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    _isolated_home: Path,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
) -> Registry:
    """TUNELOOP_MODEL = the tiny model; v1 and v2 registered, CURRENT -> v1."""
    registry = tiny_registry(
        monkeypatch, _isolated_home, tiny_model_dir, tiny_adapters, max_new_tokens=MAX_NEW
    )
    registry.set_current("v1")
    return registry


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_for_generation(tiny_model_dir, bf16=False)


@pytest.fixture(scope="module")
def v1(tiny_model_dir: Path, tiny_adapters: dict[str, Path]) -> tuple[Any, Any]:
    return load_for_generation(tiny_model_dir, tiny_adapters["v1"], bf16=False)


def convs(system: str = "") -> list[list[dict[str, str]]]:
    head = [{"role": "system", "content": system}] if system else []
    return [head + [{"role": "user", "content": q}] for q in QUESTIONS]


def test_batched_replies_equal_one_at_a_time_and_the_chat_engine(
    base: tuple[Any, Any],
    v1: tuple[Any, Any],
    tiny_model_dir: Path,
    tmp_path: Path,
    tiny_adapters: dict[str, Path],
) -> None:
    from app.serving.engine import ChatEngine, SamplingParams

    single = generate_replies(*v1, convs(), max_new_tokens=MAX_NEW, batch_size=1)
    batched = generate_replies(*v1, convs(), max_new_tokens=MAX_NEW, batch_size=4)
    assert batched == single
    assert len(set(single)) > 1 and all(single)
    bare = generate_replies(*base, convs(), max_new_tokens=MAX_NEW, batch_size=4)
    assert bare != single  # the adapter answers differently from the bare base

    registry = Registry(tmp_path / "adapters")
    registry.register("v1", tiny_adapters["v1"])
    with ChatEngine(tiny_model_dir, registry, context_tokens=512, bf16=False) as engine:
        params = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
        chat = [engine.generate(c, params, adapter="v1").text for c in convs()[:3]]
        chat_base = [engine.generate(c, params, adapter=None).text for c in convs()[:3]]
    assert chat == single[:3]
    assert chat_base == bare[:3]


def test_sampling_and_bad_arguments(base: tuple[Any, Any]) -> None:
    sampled = generate_replies(*base, convs(), max_new_tokens=8, temperature=1.5, batch_size=3)
    assert len(sampled) == len(QUESTIONS) and all(isinstance(r, str) for r in sampled)
    with pytest.raises(GenerationError, match="conversation 2: must end with a user message"):
        generate_replies(*base, [convs()[0], [{"role": "assistant", "content": "x"}]])
    with pytest.raises(GenerationError, match="exceed the model's 512-token context"):
        generate_replies(*base, convs()[:1], max_new_tokens=600)


def test_generate_cli_both_shapes_system_prompt_and_carried_keys(
    env: Registry,
    base: tuple[Any, Any],
    v1: tuple[Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    rows = [
        {"prompt": QUESTIONS[0], "id": "a", "customer": "Dana", "meta": {"k": [1, 2]}},
        {"messages": [{"role": "user", "content": QUESTIONS[1]}], "id": "b"},
        {"prompt": QUESTIONS[2], "system": "You are terse.", "id": "c"},
        {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": QUESTIONS[3]},
            ],
            "id": "d",
        },
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "generate", "--in", str(src), "--out", str(out), "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["generated"] == 4 and summary["skipped"] == 0 and summary["adapter"] == "v1"

    got = read_jsonl(out)
    assert [
        {k: v for k, v in r.items() if k not in ("reply", "adapter", "latency_ms")} for r in got
    ] == rows  # carried keys untouched, input order kept
    assert all(r["adapter"] == "v1" and r["latency_ms"] >= 0 for r in got)
    system = Settings().system_prompt()
    assert system  # the deployment's prompt from data/ applies when a row brings none
    expected = generate_replies(
        *v1, [row_conversation(r, system) for r in rows], max_new_tokens=MAX_NEW
    )
    assert [r["reply"] for r in got] == expected
    assert row_conversation(rows[0], system)[0] == {"role": "system", "content": system}
    assert row_conversation(rows[2], system)[0]["content"] == "You are terse."
    assert row_conversation(rows[3], system)[0]["content"] == "Be kind."

    # --adapter base answers with the bare model and says so
    out_base = tmp_path / "base.jsonl"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "--in",
        str(src),
        "--out",
        str(out_base),
        "--adapter",
        "base",
        "--batch-size",
        "3",
    )
    assert code == 0, err
    got_base = read_jsonl(out_base)
    assert {r["adapter"] for r in got_base} == {"base"}
    assert [r["reply"] for r in got_base] == generate_replies(
        *base, [row_conversation(r, system) for r in rows], max_new_tokens=MAX_NEW
    )
    # an unknown version is refused before anything runs
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "--in",
        str(src),
        "--out",
        str(tmp_path / "x.jsonl"),
        "--adapter",
        "v9",
    )
    assert code == 1 and "not registered" in err and not (tmp_path / "x.jsonl").exists()


class _Interrupted(Exception):
    pass


class _FailsOnCall:
    """The real model, interrupted (like Ctrl-C) when its `generate` is called the n-th time."""

    def __init__(self, model: Any, fail_on: int) -> None:
        self._model, self._fail_on, self.calls = model, fail_on, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self._fail_on:
            raise _Interrupted
        return self._model.generate(**kwargs)


def test_resume_after_an_interruption(v1: tuple[Any, Any], tmp_path: Path) -> None:
    rows = [{"prompt": q, "n": i} for i, q in enumerate(QUESTIONS)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    clean = tmp_path / "clean.jsonl"
    generate_file(
        lambda: v1,
        src,
        clean,
        adapter="v1",
        system_prompt="",
        params=GenParams(MAX_NEW, batch_size=3),
    )

    out = tmp_path / "out.jsonl"
    model, tok = v1
    flaky = _FailsOnCall(model, fail_on=2)
    with pytest.raises(_Interrupted):
        generate_file(
            lambda: (flaky, tok),
            src,
            out,
            adapter="v1",
            system_prompt="",
            params=GenParams(MAX_NEW, batch_size=3),
        )
    partial = read_jsonl(out)
    assert len(partial) == 3  # the first batch was saved as it finished
    with open(out, "a", encoding="utf-8") as f:  # and a write torn by the kill
        f.write('{"prompt": "How do I wa')

    loads = []

    def load() -> tuple[Any, Any]:
        loads.append(1)
        return v1

    summary = generate_file(
        load, src, out, adapter="v1", system_prompt="", params=GenParams(MAX_NEW, batch_size=3)
    )
    assert summary["skipped"] == 3 and summary["generated"] == len(rows) - 3
    assert untimed(read_jsonl(out)) == untimed(read_jsonl(clean))  # same replies, input order

    # nothing left to do: the model is not even loaded
    loads.clear()
    summary = generate_file(
        load, src, out, adapter="v1", system_prompt="", params=GenParams(batch_size=3)
    )
    assert summary["generated"] == 0 and summary["skipped"] == len(rows) and not loads

    # a new row appended to the input is the only one generated
    src2 = write_jsonl(tmp_path / "in2.jsonl", [*rows, {"prompt": "Hello!", "n": 99}])
    summary = generate_file(
        load, src2, out, adapter="v1", system_prompt="", params=GenParams(MAX_NEW)
    )
    assert summary["generated"] == 1 and read_jsonl(out)[-1]["n"] == 99

    # replies from another adapter are not mixed in
    with pytest.raises(GenerationError, match="holds replies from adapter 'v1', not 'base'"):
        generate_file(load, src2, out, adapter="base", system_prompt="", params=GenParams())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 3: not valid JSON"),
        ('["a list"]', "line 3: expected a JSON object, got list"),
        ('{"text": "hi"}', 'line 3: needs "messages"'),
        ('{"prompt": ""}', 'line 3: "prompt" must be a non-empty string'),
        ('{"prompt": "hi", "system": 3}', 'line 3: "system" must be a string'),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": '
            '"yo"}]}',
            "line 3: the conversation must end with a user message",
        ),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "line 3: message 1 needs a role"),
        ('{"messages": [], "prompt": "x"}', 'line 3: has both "messages" and "prompt"'),
    ],
)
def test_malformed_line_fails_before_any_generation(
    env: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    line: str,
    message: str,
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "Hi"}\n\n' + line + '\n{"prompt": "Bye"}\n', encoding="utf-8")
    # a model that cannot load shows that the file was refused before loading
    monkeypatch.setenv("TUNELOOP_MODEL", str(tmp_path / "no-such-model"))
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--in", str(src), "--out", str(out))
    assert code == 1
    assert err.startswith("error: ") and message in err, err
    assert not out.exists()
    with pytest.raises(GenerationError, match=re.escape(message)):
        read_rows(src)


def test_a_shared_system_prompt_runs_once_per_batch_and_changes_no_reply(
    v1: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long system prompt every row shares is computed once and its cache copied to every
    row (middle padding): the replies are those of one-at-a-time and of plain left padding."""
    import training.eval.generate as generate

    system = "You answer questions for a garden shop, briefly and politely. " * 6
    conversations = convs(system)
    model, tokenizer = v1
    ids = [generate._encode(tokenizer, c, i) for i, c in enumerate(conversations)]
    assert generate.shared_prefix(ids) >= generate.SHARED_PREFIX_MIN_TOKENS
    single = generate_replies(*v1, conversations, max_new_tokens=MAX_NEW, batch_size=1)

    forwarded: list[int] = []
    real = type(model).__call__

    def count(self: Any, *args: Any, **kw: Any) -> Any:
        if "cache" in kw and kw.get("input_ids") is not None:
            forwarded.append(int(kw["input_ids"].shape[0]))
        return real(self, *args, **kw)

    monkeypatch.setattr(type(model), "__call__", count)
    shared = generate_replies(*v1, conversations, max_new_tokens=MAX_NEW, batch_size=4)
    monkeypatch.undo()
    assert forwarded == [1, 1]  # the prefix, once per batch of 4 and 3 rows, on one row
    monkeypatch.setattr(generate, "SHARED_PREFIX_MIN_TOKENS", 10**9)
    padded = generate_replies(*v1, conversations, max_new_tokens=MAX_NEW, batch_size=4)
    assert shared == single == padded and len(set(single)) > 1
