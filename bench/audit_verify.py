"""How long verifying one big run takes, against only reading it (issue 14).

One run of 20,000 steps (20,000 events, checkpoints and messages, keyed, each event
binding the digests of its checkpoint and message, as a step commit writes them) is
written in bulk on SQLite and Postgres. Measured, best of ``repeats``:

- **read**: the three plain SELECTs of its events, checkpoints and messages (the
  baseline: what any reader of the run pays);
- **verify**: ``Store.audit`` (one snapshot: the keyed chain, every digest recomputed,
  the ledger's entries for the run).

Target: verify under 1 s. Figures are also given as a ratio to read, in the same run.

    python -m bench audit-verify [--events 20000] [--repeats 3]
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from bench.services import pg_schema, schema_url
from pausepoint.persistence.audit_keys import AuditKeys
from pausepoint.persistence.digests import checkpoint_digest, messages_digest
from pausepoint.persistence.records import NewEvent
from pausepoint.persistence.store import Store
from pausepoint.persistence.store.core import chain
from pausepoint.persistence.tables import checkpoints, events, messages, runs

KEY = AuditKeys.of("bench-audit-key-0123456789abcdef")


@contextmanager
def store_of(kind: str, tmp: Path) -> Iterator[Store]:
    if kind == "sqlite":
        store = Store.from_url(f"sqlite:///{tmp / 'audit.db'}", audit_keys=KEY)
        try:
            yield store
        finally:
            store.close()
        return
    with pg_schema("bench_audit") as schema:
        store = Store.from_url(schema_url(schema), audit_keys=KEY)
        try:
            yield store
        finally:
            store.close()


def build(store: Store, steps: int, *, text_size: int = 0) -> str:
    """A run of ``steps`` step commits, written in bulk exactly as the commits write;
    each message padded to ``text_size`` characters."""
    store.save_agent("bench", persona="")
    run, _ = store.create_run(agent_name="bench", workflow="w", first_step="s", actor="bench")
    keys = store.audit_keys
    t0 = datetime.now(timezone.utc)
    cps, msgs, new_events = [], [], []
    for i in range(1, steps + 1):
        at = t0 + timedelta(microseconds=i)
        state = {"n": i, "notes": f"step {i} looked at the account and moved on"}
        cp = {"seq": i, "step": "s", "state": state, "history_len": i, "segments": None}
        text = f"step {i}: done".ljust(text_size, ".")
        msg = {"idx": i - 1, "role": "assistant", "content": text, "data": None}
        cps.append({**cp, "run_id": run.id, "created_at": at})
        msgs.append({**msg, "run_id": run.id, "seq": i, "created_at": at})
        digests = {
            "checkpoint": [i, checkpoint_digest(keys, cp)],
            "messages": [i - 1, 1, messages_digest(keys, [msg])],
        }
        new_events.append((NewEvent("step_completed", {"seq": i, "digests": digests}), at))
    rows: list[dict[str, Any]] = []
    head, count = run.event_hash, run.event_count
    for event, at in new_events:
        part, count, head = chain(keys, run.id, head, count, [event], "worker", at)
        rows += part
    with store.write() as conn:
        for table, batch in ((checkpoints, cps), (messages, msgs), (events, rows)):
            for i in range(0, len(batch), 5000):
                conn.execute(insert(table), batch[i : i + 5000])
        conn.execute(
            update(runs)
            .where(runs.c.id == run.id)
            .values(
                seq=steps,
                history_len=steps,
                message_count=steps,
                event_count=count,
                event_hash=head,
            )
        )
    return run.id


def read(store: Store, run_id: str) -> int:
    with store.read() as conn:
        n = 0
        for table, order in ((events, events.c.n), (checkpoints, checkpoints.c.seq)):
            n += len(
                conn.execute(select(table).where(table.c.run_id == run_id).order_by(order)).all()
            )
        n += len(conn.execute(select(messages).where(messages.c.run_id == run_id)).all())
        return n


def best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(steps: int = 20_000, repeats: int = 3, out: Path | None = None) -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sqlite", "postgres"):
            with store_of(kind, Path(tmp)) as store:
                run_id = build(store, steps)
                audit = store.audit(run_id)
                assert audit.ok and audit.events == steps + 1, audit.findings[:3]
                read_s = best(partial(read, store, run_id), repeats)
                verify_s = best(partial(store.audit, run_id), repeats)
                results.append(
                    {
                        "store": kind,
                        "events": audit.events,
                        "read_s": round(read_s, 3),
                        "verify_s": round(verify_s, 3),
                        "ratio": round(verify_s / read_s, 2),
                        "target_met": verify_s < 1.0,
                    }
                )
    print(f"verifying one run of {steps + 1:,} events (best of {repeats}):")
    print(f"{'store':10} {'read':>8} {'verify':>8} {'ratio':>7}  target < 1 s")
    for r in results:
        met = "met" if r["target_met"] else "MISSED"
        print(
            f"{r['store']:10} {r['read_s']:>7.3f}s {r['verify_s']:>7.3f}s "
            f"{r['ratio']:>6.2f}x  {met}"
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"steps": steps, "results": results}, indent=2) + "\n")
    return 0 if all(r["target_met"] for r in results) else 1
