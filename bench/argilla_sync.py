"""Argilla sync benchmark against a real local Argilla stack started for the run.

    .venv/bin/python -m bench.argilla_sync [--n 5000] [--new 100]

Prints, all measured in this one run:
- push: our queue + push of N pairs (outbox rows, upsert by external id, bookkeeping) in
  pairs/s, against the SDK's own bulk `records.log` of N equivalent records (goal >= 0.9x);
- pull: a full pull of N submitted responses into the store, then an incremental pull of
  NEW new responses among them (goal: under 2 s);
- the memory (PSS) of the whole local stack at rest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="pairs pushed and responses pulled")
    parser.add_argument("--new", type=int, default=100, help="new responses for the delta pull")
    args = parser.parse_args()

    import argilla as rg

    from app.config import Settings
    from feedback.argilla import dataset as D
    from feedback.argilla import sync as S
    from feedback.argilla.outbox import NewPair, queue_pairs
    from feedback.argilla.stack import LocalStack
    from feedback.store import Store
    from tests.server import free_port

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        stack = LocalStack(home=home, venv=Settings().argilla_venv, port=free_port())
        started = time.perf_counter()
        stack.up()
        print(f"stack up (empty -> healthy): {time.perf_counter() - started:.1f} s")
        try:
            creds = stack.credentials()
            assert creds is not None
            target = D.Target(credentials=creds, dataset="bench-ours", min_submitted=1)
            client = D.connect(target)

            # Baseline: the SDK's own bulk log of N equivalent records.
            base = D.ensure_dataset(client, D.Target(credentials=creds, dataset="bench-sdk"))
            records = [
                rg.Record(
                    id=f"sdk-{i}",
                    fields={
                        "conversation": [{"role": "user", "content": f"Question {i}?"}],
                        "response_a": f"First answer {i}.",
                        "response_b": f"Second answer {i}.",
                    },
                    metadata={"source": "generated"},
                )
                for i in range(args.n)
            ]
            t0 = time.perf_counter()
            base.records.log(records, batch_size=256)
            sdk_s = time.perf_counter() - t0

            # Ours: queue N pairs in the outbox, then push them.
            store = Store.open(f"sqlite:///{home / 'bench.db'}")
            dataset = D.ensure_dataset(client, target)  # one-time, like the baseline's
            t0 = time.perf_counter()
            queue_pairs(
                store,
                [
                    NewPair(
                        source="generated",
                        prompt=[{"role": "user", "content": f"Question {i}?"}],
                        first=f"First answer {i}.",
                        second=f"Second answer {i}.",
                        metadata={"model": "bench"},
                    )
                    for i in range(args.n)
                ],
            )
            queue_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pushed, failed = S.push(store, dataset)
            push_s = time.perf_counter() - t0
            assert (pushed, failed) == (args.n, 0)
            ours_s = queue_s + push_s
            print(f"SDK records.log: {args.n} records in {sdk_s:.1f} s = {args.n / sdk_s:.0f}/s")
            print(
                f"ours (queue {queue_s:.1f} s + push {push_s:.1f} s): "
                f"{args.n / ours_s:.0f} pairs/s = {sdk_s / ours_s:.2f}x the SDK "
                f"(push alone {sdk_s / push_s:.2f}x)"
            )

            # N submitted responses (setup, not measured: the owner logs them in bulk).
            D.ensure_annotator(client, target, "bench1", "bench-pass-1")
            D.ensure_annotator(client, target, "bench2", "bench-pass-2")
            t0 = time.perf_counter()
            _respond(store, dataset, client, "bench1", slice(0, args.n - args.new))
            print(
                f"(setup: {args.n - args.new} responses logged in {time.perf_counter() - t0:.1f} s)"
            )

            t0 = time.perf_counter()
            report = S.SyncReport()
            S.pull(store, dataset, target, report)
            full_s = time.perf_counter() - t0
            _respond(store, dataset, client, "bench2", slice(args.n - args.new, args.n))
            t0 = time.perf_counter()
            delta = S.SyncReport()
            S.pull(store, dataset, target, delta)
            delta_s = time.perf_counter() - t0
            assert delta.pulled == args.new, delta.as_dict()
            print(
                f"full pull: {report.pulled} responses in {full_s:.2f} s "
                f"({report.pulled / full_s:.0f}/s)"
            )
            print(
                f"incremental pull: {delta.pulled} new among {report.pulled + delta.pulled} in "
                f"{delta_s:.2f} s = {delta_s / full_s:.2f}x the full pull (goal < 2 s)"
            )
            time.sleep(5)
            status = stack.status()
            parts = ", ".join(f"{k} {v['memory_mb']:.0f}" for k, v in status["processes"].items())
            print(f"stack memory at rest (PSS): {status['memory_mb']:.0f} MB ({parts})")
            write_result("bench.argilla_sync", {
                "sdk_log_s": sdk_s, "queue_s": queue_s, "push_s": push_s,
                "ours_vs_sdk": sdk_s / ours_s, "push_vs_sdk": sdk_s / push_s,
                "full_pull": {"responses": report.pulled, "seconds": full_s},
                "delta_pull": {"responses": delta.pulled, "seconds": delta_s},
                "stack_memory_mb": status["memory_mb"],
                "process_memory_mb": {k: v["memory_mb"] for k, v in status["processes"].items()},
            }, settings=vars(args))  # fmt: skip
        finally:
            stack.down()


def _respond(store: Any, dataset: Any, client: Any, name: str, which: slice) -> None:
    """Log a submitted "A" by annotator `name` on the pairs in `which` (SDK bulk upsert)."""
    import argilla as rg
    from sqlmodel import Session, col, select

    from feedback.argilla.sync import to_record
    from feedback.models_external import ArgillaPair

    user_id = client.users(username=name).id
    with Session(store.engine) as session:
        pairs = session.exec(select(ArgillaPair).order_by(col(ArgillaPair.id))).all()[which]
    records = []
    for pair in pairs:
        record = to_record(pair)
        record.responses.add(rg.Response("choice", "A", user_id=user_id, status="submitted"))
        records.append(record)
    dataset.records.log(records, batch_size=256)


if __name__ == "__main__":
    main()
