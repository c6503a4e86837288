"""`tuneloop watch`: when a round is due, one at a time, state from disk (survives restarts)."""

from __future__ import annotations

import fcntl
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feedback.store import Store
from tests.tiny import add_pairs
from training import rounds_dir, schedule

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _round(n: int, status: str, *, minutes_ago: float, **extra: object) -> dict:
    started = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return {
        "id": f"r{n:04d}-20261122T0930",
        "status": status,
        "stage": "done",
        "started_at": started,
        "finished_at": started,
        **extra,
    }


def due(rounds: list[dict], prefs: int, *, busy: bool = False, interval: float = 0.0,
           other: int = 0) -> schedule.Decision:  # fmt: skip
    return schedule.round_due(
        rounds=rounds,
        new={"preferences": prefs, "corrections": other, "ratings": 0},
        busy=busy,
        min_new=10,
        interval_minutes=interval,
        now=NOW,
    )


def test_a_round_is_due_once_enough_new_preferences_arrived() -> None:
    assert not due([], 9).run
    assert due([], 10).run
    assert "10 new preferences" in due([], 10).reason
    done = [_round(1, "promoted", minutes_ago=5)]
    assert due(done, 12).run and not due(done, 3).run


def test_the_interval_starts_a_round_only_when_something_is_new() -> None:
    done = [_round(1, "rejected", minutes_ago=90)]
    assert due(done, 1, interval=60).run
    assert not due(done, 1, interval=120).run  # not yet
    assert not due(done, 0, interval=60).run  # nothing new: no point retraining
    assert due(done, 0, interval=60, other=2).run  # corrections count too
    assert not due(done, 1, interval=0).run  # interval off


def test_one_round_at_a_time_and_a_crashed_round_is_resumed() -> None:
    assert not due([], 50, busy=True).run
    crashed = [_round(1, "running", minutes_ago=5)]
    d = due(crashed, 0)
    assert d.run and d.resume and "r0001" in d.reason


def test_an_interrupted_round_is_resumed_at_once() -> None:
    stopped = [_round(1, "failed", minutes_ago=1, reason="interrupted")]
    d = due(stopped, 0)
    assert d.run and d.resume


def test_a_failed_round_is_not_retried_in_a_loop() -> None:
    failed = [_round(1, "failed", minutes_ago=5, reason="disk full")]
    d = due(failed, 50)
    assert not d.run and "disk full" in d.reason
    later = [_round(1, "failed", minutes_ago=schedule.FAILED_BACKOFF_MINUTES + 1)]
    assert due(later, 50).run


def test_lock_held_sees_a_live_round_and_not_a_dead_one(tmp_path: Path) -> None:
    rounds = tmp_path / "rounds"
    assert not rounds_dir.lock_held(rounds)
    rounds.mkdir()
    with open(rounds / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running round holds
        assert rounds_dir.lock_held(rounds)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert not rounds_dir.lock_held(rounds)  # the file stays; a released lock is free


def _prefs(store: Store, n: int, start: int = 0) -> None:
    add_pairs(store, n, start=start)


def test_check_reads_new_feedback_and_rounds_from_disk(tmp_path: Path) -> None:
    """The decision comes from the store and the rounds dir alone: a fresh watcher process
    (a restart) decides exactly what the old one would have."""
    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    rounds = tmp_path / "rounds"
    _prefs(store, 4)
    d = schedule.check(store, rounds, min_new=4, interval_minutes=0)
    assert d.run and d.new["preferences"] == 4 and d.last_round is None

    # a finished round froze those 4; two more arrive: below the threshold
    folder = rounds / "r0001-20261122T0930"
    folder.mkdir(parents=True)
    (folder / "snapshot.json").write_text(json.dumps(store.feedback_marks()))
    state = _round(1, "promoted", minutes_ago=1)
    (folder / "state.json").write_text(json.dumps(state))
    _prefs(store, 2, start=10)
    d = schedule.check(store, rounds, min_new=4, interval_minutes=0)
    assert not d.run and d.new["preferences"] == 2 and d.last_round == state["id"]
    _prefs(store, 2, start=20)
    assert schedule.check(store, rounds, min_new=4, interval_minutes=0).run


def test_watch_runs_a_due_round_and_reports_it() -> None:
    calls: list[bool] = []
    said: list[str] = []
    events = schedule.watch(
        checker=lambda: schedule.Decision(True, "12 new preferences (threshold 10)"),
        runner=lambda resume: (
            calls.append(resume)
            or {"returncode": 0, "round": {"status": "promoted", "version": "r0001-x-sft"}}
        ),
        poll_seconds=0,
        once=True,
        say=said.append,
    )
    assert calls == [False]
    assert events[0]["result"]["round"]["status"] == "promoted"
    assert said[-1] == "round finished: promoted r0001-x-sft"


def test_watch_keeps_checking_until_stopped() -> None:
    decisions = iter([schedule.Decision(False, "1 new"), schedule.Decision(True, "due", True)])
    ran: list[bool] = []

    def runner(resume: bool) -> dict:
        ran.append(resume)
        raise KeyboardInterrupt  # how an operator stops `tuneloop watch`

    with pytest.raises(KeyboardInterrupt):
        schedule.watch(
            checker=lambda: next(decisions),
            runner=runner,
            poll_seconds=0,
            say=lambda _: None,
            sleep=lambda _: None,
        )
    assert ran == [True]
