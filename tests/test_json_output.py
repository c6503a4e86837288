"""`--json` output scripts can trust: every command that takes `--json` prints exactly one
JSON object on stdout, on success and on failure alike (with `error` then), and every
import or path error is one line that names the line or the path."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cli import INCONCLUSIVE_GATE, run_cli


def json_commands() -> set[str]:
    """Every command path of `tuneloop` that has a --json option."""
    import typer.main

    from app.cli.main import app

    found: set[str] = set()

    def walk(command, path: list[str]) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        elif any("--json" in getattr(p, "opts", ()) for p in command.params):
            found.add(" ".join(path))

    walk(typer.main.get_command(app), [])
    return found


def one_object(out: str) -> dict:
    """stdout holds exactly one JSON object (one line)."""
    assert out.count("\n") == 1 and out.endswith("\n"), repr(out[:500])
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> Path:
    # A team Argilla that is not there: the argilla commands fail fast, nothing starts.
    monkeypatch.setenv("TUNELOOP_ARGILLA_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TUNELOOP_ARGILLA_API_KEY", "secret-key-123")
    monkeypatch.setenv("TUNELOOP_ARGILLA_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_TRACKER", "none")
    return tmp_path


CASES: list[tuple[str, list[str], str]] = [
    # (command, its arguments, stdin)
    ("users add", ["erin", "--role", "expert"], "erin-pass"),
    ("users key", ["erin"], ""),
    ("init", ["{tmp}/domain"], ""),
    ("users list", [], ""),
    ("users passwd", ["erin"], "new-pass"),
    ("users disable", ["erin"], ""),
    ("users enable", ["erin"], ""),
    ("users unlock", ["erin"], ""),
    ("users remove", ["erin"], ""),
    ("import", ["{missing}"], ""),
    ("export", ["sft", "--out", "{tmp}/sft.jsonl"], ""),
    ("status", [], ""),
    ("train", ["--resume"], ""),
    ("promote", ["no-such-version"], ""),
    ("rollback", [], ""),
    ("rounds", [], ""),
    ("watch", ["--once"], ""),
    ("generate", ["{missing}", "{tmp}/out.jsonl"], ""),
    ("eval", ["{missing}"], ""),
    ("argilla up", [], ""),
    ("argilla down", [], ""),
    ("argilla status", [], ""),
    ("argilla sync", [], ""),
    ("openwebui sync", [], ""),
    ("pairs generate", ["--prompts", "{missing}"], ""),
]


def test_every_json_command_prints_one_object(env: Path, monkeypatch, capsys) -> None:
    assert {name for name, _, _ in CASES} == json_commands(), "a --json command has no case"
    failures = 0
    for name, args, stdin in CASES:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin + "\n"))
        filled = [a.format(tmp=env, missing=env / "missing.jsonl") for a in args]
        code, out, err = run_cli(monkeypatch, capsys, *name.split(), *filled, "--json")
        value = one_object(out)
        assert "secret-key-123" not in out + err
        if code:
            failures += 1
            assert value["error"] and value["exit_code"] == code, (name, value)
            assert err.startswith("error: "), (name, err)
    assert failures >= 8  # the cases above include that many refusals


def test_bad_usage_with_json_is_one_object_too(env: Path, monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "export", "sft", "--json")
    assert code == 2 and "--out" in one_object(out)["error"]
    code, out, _ = run_cli(monkeypatch, capsys, "no-such-command", "--json")
    assert code == 2 and one_object(out)["exit_code"] == 2


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n', "not UTF-8"),
        (b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n", "nested deeper"),
        (b'{"prompt": "a\\ud800", "chosen": "b", "rejected": "c"}\n', "lone surrogate"),
        (b'{"prompt": "a\\u0000", "chosen": "b", "rejected": "c"}\n', "NUL"),
    ],
)
def test_import_errors_name_their_line(
    tmp_path: Path, monkeypatch, capsys, content: bytes, says: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "fine", "chosen": "b", "rejected": "c"}\n' + content)
    code, out, err = run_cli(monkeypatch, capsys, "import", str(path), "--json")
    message = one_object(out)["error"]
    assert code == 1 and message.startswith(f"{path}:2: ") and says in message, message
    assert err.count("\n") == 1
    code, out, _ = run_cli(monkeypatch, capsys, "status", "--json")
    assert one_object(out)["counts"].get("preferences", 0) == 0  # nothing was written


def test_path_errors_are_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    for out_path, says in [(tmp_path, "is a folder"), (tmp_path / "f" / "x.jsonl", "is a file")]:
        (tmp_path / "f").write_text("")
        code, out, err = run_cli(monkeypatch, capsys, "export", "dpo", "--out", str(out_path))
        assert code == 1 and out == "" and err.count("\n") == 1 and says in err, err
    code, _, err = run_cli(monkeypatch, capsys, "import", str(tmp_path))
    assert code == 1 and err.count("\n") == 1 and "is a folder" in err


def test_a_training_round_keeps_stdout_for_its_json(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The trainer prints its metric dicts; as its own process, stdout still holds one object.
    The round runs TUNELOOP_MODEL_NICE below normal, every thread of it. With the default
    tracker, each stage is one tracker run holding the round's own loss curve."""
    from app.config import Settings
    from feedback.store import Store
    from tests.test_tracking import logged_metrics
    from tests.tiny import add_pairs
    from training import tracking

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    add_pairs(  # each pair its own chosen reply: one repeating a held-out reply is left out
        Store.open(settings.database), 8, prompt="What comes after June, question {i}?",
        chosen="July comes after June, {i}.", rejected="A spider has eight legs.",
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "train", "--json", "--no-promote", "--max-steps", "2"],
        env={
            **os.environ,
            "TUNELOOP_MODEL": str(tiny_model_dir),
            "TUNELOOP_MODEL_NICE": "7",
            **INCONCLUSIVE_GATE,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if os.getpriority(os.PRIO_PROCESS, 0) >= 19:
        pytest.skip("this test process already runs at the lowest priority; nothing to lower")
    seen: set[int] = set()
    watcher = threading.Thread(target=_thread_nices, args=(proc, seen), daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate(timeout=600)
    watcher.join(timeout=10)
    assert proc.returncode == 0, stderr[-2000:]
    result = one_object(stdout)
    assert result["status"] == "inconclusive"  # INCONCLUSIVE_GATE
    assert "'loss'" in stderr or "train_runtime" in stderr  # the trainer's own prints
    # Once the round has lowered itself, every thread of it (torch's workers too) runs 7
    # below where it started (this process's; an in-process `train` may have lowered it).
    assert seen == {min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)}, seen

    round_id, rounds = result["id"], settings.rounds_dir
    assert sorted(tracking.runs(rounds)) == [f"{round_id}-dpo", f"{round_id}-sft"]
    lines = (rounds / round_id / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    for stage in ("sft", "dpo"):  # the tracker holds the round's own metrics.jsonl curve
        ours = [m["loss"] for m in logged if m["stage"] == stage and "loss" in m]
        points = logged_metrics(rounds, f"{round_id}-{stage}")
        tracked = [p["train/loss"] for p in points if "train/loss" in p]
        assert ours and tracked == pytest.approx(ours), stage


def test_lowering_twice_in_one_process_does_not_sink_further() -> None:
    """A command run twice in one process (tests, an embedding program) lowers itself to the
    same place, relative to where the process started."""
    code = (
        "import os; from app.serving.cpu_env import lower_thread_priority as low; "
        "print(os.getpriority(os.PRIO_PROCESS, 0), low(3), low(3), low(1))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    start = int(out[0])
    assert out[1:] == [str(min(19, start + 3))] * 3, out  # and never raised back either


def _thread_nices(proc: subprocess.Popen, seen: set[int]) -> None:
    """The nice value of every thread of `proc` once it has lowered its main thread."""
    lowered = False
    while proc.poll() is None:
        for task in Path(f"/proc/{proc.pid}/task").glob("*"):
            try:
                nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            except (OSError, IndexError, ValueError):
                continue  # the thread (or the process) ended meanwhile
            if task.name == str(proc.pid) and nice > os.getpriority(os.PRIO_PROCESS, 0):
                lowered = True
            if lowered:
                seen.add(nice)
        time.sleep(0.05)
