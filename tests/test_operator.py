"""The Operator tab's logic (app/web/operator.py): operators only, checked on the server."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from app.config import Settings
from app.web.operator import OperatorError, OperatorService
from feedback.store import Store
from tests.tiny import add_pairs
from training.registry import Registry

ROUND = "r0001-20261122T0930"


@pytest.fixture
def service(_isolated_home: Path) -> OperatorService:
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database)
    store.add_user(name="olga", role="operator", password="pw")
    store.add_user(name="erin", role="expert", password="pw")
    store.add_user(name="anna", role="annotator", password="pw")
    return OperatorService(
        store=store, registry=Registry(settings.adapters_dir), rounds_dir=settings.rounds_dir
    )


def _write_round(rounds: Path, round_id: str = ROUND, **state: object) -> Path:
    folder = rounds / round_id
    folder.mkdir(parents=True, exist_ok=True)
    full = {"id": round_id, "status": "running", "stage": "sft", "step": 3, "max_steps": 10,
            "loss": 1.2345, "started_at": "2026-11-22T09:30:00+00:00", "finished_at": None,
            "reason": None, "version": None, **state}  # fmt: skip
    (folder / "state.json").write_text(json.dumps(full))
    return folder


def test_only_operators_can_do_anything(service: OperatorService, tiny_adapters) -> None:
    service.registry.register("v1", tiny_adapters["v1"])
    actions = [
        lambda who: service.summary(who),
        lambda who: service.progress(who),
        lambda who: service.history(who),
        lambda who: service.round_details(who, None),
        lambda who: service.versions(who),
        lambda who: service.evals(who, "v1"),
        lambda who: service.start_round(who),
        lambda who: service.promote(who, "v1"),
        lambda who: service.rollback(who),
    ]
    for who in ("erin", "anna", "nobody", None):
        assert not service.is_operator(who)
        for action in actions:
            with pytest.raises(OperatorError, match="Only operators"):
                action(who)
    assert service.registry.current() is None  # nothing was promoted
    assert not service.rounds_dir.exists()  # nothing was started
    assert service.is_operator("olga")
    assert service.versions("olga") == ["v1"]


def test_promote_and_rollback_walk_the_history(service: OperatorService, tiny_adapters) -> None:
    reg = service.registry
    reg.register("v1", tiny_adapters["v1"])
    reg.register("v2", tiny_adapters["v2"])
    with pytest.raises(OperatorError, match="nothing to roll back"):
        service.rollback("olga")
    assert service.promote("olga", "v1") == "Now serving v1."
    service.promote("olga", "v2")
    assert reg.current() == "v2"
    assert "Serving:** v2" in service.summary("olga")
    assert service.rollback("olga") == "Rolled back: now serving v1."
    assert reg.current() == "v1"
    # a second rollback goes further back, it does not toggle back to v2
    assert service.rollback("olga") == "Rolled back: now serving the bare base model."
    assert reg.current() is None
    with pytest.raises(OperatorError, match="not registered"):
        service.promote("olga", "v9")
    assert reg.current() is None


def test_a_corrupted_version_is_refused_and_serving_is_unchanged(
    service: OperatorService, tiny_adapters
) -> None:
    reg = service.registry
    reg.register("v1", tiny_adapters["v1"])
    reg.register("v2", tiny_adapters["v2"])
    service.promote("olga", "v1")
    weights = reg.path("v2") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(OperatorError, match="corrupted"):
        service.promote("olga", "v2")
    assert reg.current() == "v1"


def test_progress_history_and_round_details_come_from_the_rounds_dir(
    service: OperatorService,
) -> None:
    assert service.progress("olga") == "_No round has run yet._"
    rounds = service.rounds_dir
    done = _write_round(rounds, status="rejected", stage="done", version=f"{ROUND}-sft",
                        reason="no better than serving on pref_accuracy")  # fmt: skip
    (done / "report.json").write_text(json.dumps({"metrics": {"sft": {"pref_accuracy": 0.5}}}))
    (done / "report.md").write_text("# Round r0001\n\nrejected")
    (done / "loss.png").write_bytes(b"\x89PNG\r\n")
    live = _write_round(rounds, "r0002-20261122T1000", stage="dpo", step=7, loss=0.6931)

    progress = service.progress("olga")
    assert "r0002" in progress and "**dpo**" in progress and "7/10" in progress
    assert "0.6931" in progress
    history = service.history("olga")
    assert [row[0] for row in history] == ["r0002-20261122T1000", ROUND]  # newest first
    assert history[1][1] == "rejected" and "sft.pref_accuracy=0.5" in history[1][4]
    assert "no better" in history[1][5]
    text, plots = service.round_details("olga", ROUND)
    assert "rejected" in text and plots == [str(done / "loss.png")]
    text, plots = service.round_details("olga", None)  # the newest round
    assert text == "_No report yet._" and plots == []
    assert live.name in service.history("olga")[0][0]
    with pytest.raises(OperatorError, match="no round"):
        service.round_details("olga", "../../etc")


def test_eval_results_recorded_with_a_version_are_shown(
    service: OperatorService, tiny_adapters
) -> None:
    reg = service.registry
    reg.register("v1", tiny_adapters["v1"])
    reg.update_info("v1", status="promoted", metrics={"pref_accuracy": 0.75},
                    evals={"triage": {"rubric_pass": 0.4, "n": 20}})  # fmt: skip
    text = service.evals("olga", "v1")
    assert "status: promoted" in text and "pref_accuracy: 0.75" in text
    assert "triage: rubric_pass=0.4, n=20" in text


def test_new_feedback_counts_since_the_last_round(service: OperatorService) -> None:
    add_pairs(service.store, 3, prompt="q{i}", chosen="a", rejected="b")
    assert service.new_feedback("olga")["preferences"] == 3
    assert "3 preferences" in service.summary("olga")


def test_start_round_refuses_while_a_round_holds_the_lock(service: OperatorService) -> None:
    service.rounds_dir.mkdir(parents=True)
    with open(service.rounds_dir / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OperatorError, match="already running"):
            service.start_round("olga")
        fcntl.flock(held, fcntl.LOCK_UN)
    assert not (service.rounds_dir / "operator-train.log").exists()
