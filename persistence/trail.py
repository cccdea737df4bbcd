"""One run's audit, read in one snapshot: its chain, the state it binds, the ledger's word.

:func:`audit_run` checks, in order:

1. the hash chain (:func:`persistence.audit.check_chain`): edits, deletions, insertions,
   reorders, re-hashing without the key;
2. what the ledger recorded for the run: that it was created here (a run the ledger
   never saw was inserted behind Pausepoint's back), that a run created under the key
   is still keyed, and that each time it ended, its trail then is still its trail's
   beginning (a cut trail whose head was moved back is found here);
3. the rows the trail binds (:mod:`persistence.digests`): each checkpoint, message and
   wait against the digest its transition's event recorded, rows no event wrote, rows
   deleted (retention's pruning and purging, which the trail records, excepted), and a
   finished run's status and result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from pausepoint.persistence import queries
from pausepoint.persistence.audit import Finding, Verdict, check_chain
from pausepoint.persistence.audit_keys import UNKEYED, AuditKeys
from pausepoint.persistence.digests import (
    CHECKPOINT_FIELDS,
    MESSAGE_FIELDS,
    checkpoint_digest,
    messages_digest,
    run_digest,
    wait_digest,
)
from pausepoint.persistence.ledger import RunEntries
from pausepoint.persistence.records import FINISHED, Event, RunRecord
from pausepoint.persistence.tables import checkpoints, messages, waits


@dataclass
class RunAudit:
    """Everything found wrong with one run (empty: it is what was written)."""

    run_id: str
    events: int
    verdict: Verdict
    findings: list[Finding] = field(default_factory=list)
    # False for a run whose trail predates state digests (migrated from before 0008).
    binds_state: bool = True

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def as_json(self) -> dict[str, Any]:
        """The verdict as the API and ``audit verify --json`` give it."""
        first = self.first
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "events": self.events,
            "first_bad": None if first is None else {"n": first.n, "problem": first.problem},
            "findings": [{"n": f.n, "problem": f.problem} for f in self.findings],
            "keyed": self.verdict.keyed,
            "unkeyed": self.verdict.unkeyed,
            "key_ids": sorted(self.verdict.key_ids),
            "binds_state": self.binds_state,
        }


def audit_run(
    conn: Connection,
    run: RunRecord,
    keys: AuditKeys,
    entries: RunEntries | None,
) -> RunAudit:
    """Audit ``run`` with ``conn`` (one snapshot); ``entries``: its ledger entries."""
    trail = queries.list_events(conn, run.id)
    verdict = check_chain(run.id, trail, run.event_count, run.event_hash, keys)
    audit = RunAudit(run.id, len(trail), verdict)
    if verdict.finding is not None:
        audit.findings.append(verdict.finding)
    audit.findings += _ledger_findings(run, trail, verdict, entries)
    if verdict.ok:
        # Runs the ledger adopted at the upgrade to 0008 may predate state digests.
        adopted = entries is None or entries.created is None or entries.created.data.get("adopted")
        audit.binds_state = not adopted or (bool(trail) and "digests" in trail[0].data)
        audit.findings += _state_findings(conn, run, trail, verdict.kids, keys, audit.binds_state)
    return audit


def _ledger_findings(
    run: RunRecord, trail: Sequence[Event], verdict: Verdict, entries: RunEntries | None
) -> list[Finding]:
    if entries is None or entries.created is None:
        return [
            Finding(
                run.id,
                1,
                "the run is not in the store's ledger: it was inserted behind Pausepoint's back",
            )
        ]
    found = []
    if not trail:
        found.append(
            Finding(run.id, 1, "the run has no trail, and the ledger recorded its creation: wiped")
        )
    if entries.created_key not in (None, UNKEYED) and verdict.unkeyed:
        found.append(
            Finding(
                run.id,
                1,
                f"is hashed without the audit key, but the ledger recorded the run's creation "
                f"under key {entries.created_key}: its trail was rewritten",
            )
        )
    for ended in entries.ended:
        count, head = int(ended.data.get("count", 0)), str(ended.data.get("head", ""))
        if count > len(trail) or (count and trail[count - 1].hash != head):
            at = ended.created_at.isoformat(timespec="seconds")
            found.append(
                Finding(
                    run.id,
                    min(count, len(trail) + 1),
                    f"the run ended ({ended.data.get('status')}) at {at} with {count} events, "
                    f"as the ledger recorded, and its trail ({len(trail)} events) no longer "
                    "begins with them: it was cut or rewritten",
                )
            )
    return found


@dataclass
class _Expected:
    digest: str
    n: int
    kid: str


def _state_findings(
    conn: Connection,
    run: RunRecord,
    trail: Sequence[Event],
    kids: Sequence[str],
    keys: AuditKeys,
    full: bool,
) -> list[Finding]:
    cps: dict[int, _Expected] = {}
    msgs: list[tuple[int, int, _Expected]] = []
    wts: dict[tuple[int, str], _Expected] = {}
    ended: _Expected | None = None
    pruned_below = 0
    for e, kid in zip(trail, kids, strict=True):
        if e.kind == "checkpoints_pruned":
            pruned_below = max(pruned_below, int(e.data.get("kept_from_seq", 0)))
        d: dict[str, Any] | None = e.data.get("digests")
        if not d:
            continue
        if "checkpoint" in d:
            seq, digest = d["checkpoint"]
            cps[int(seq)] = _Expected(str(digest), e.n, kid)
        if "messages" in d:
            first, count, digest = d["messages"]
            msgs.append((int(first), int(count), _Expected(str(digest), e.n, kid)))
        for seq, kind, digest in d.get("waits", ()):
            wts[(int(seq), str(kind))] = _Expected(str(digest), e.n, kid)
        if "run" in d:
            ended = _Expected(str(d["run"]), e.n, kid)
    found: list[Finding] = []
    last = trail[-1].n if trail else 0

    def add(n: int, problem: str) -> None:
        found.append(Finding(run.id, n, problem))

    if run.status in FINISHED:
        if ended is not None:
            now = {"status": run.status, "result": run.result, "error": run.error, "seq": run.seq}
            if run_digest(keys, now, ended.kid) != ended.digest:
                add(
                    ended.n,
                    f"the run's status or result ({run.status}) is not what this event "
                    "recorded: it was edited",
                )
        elif full:
            add(last, f"the run says it {run.status}, but no event of its trail ended it")
    if run.purge_state is not None:
        return found  # retention took the state; its "purged" event says so

    cp_columns = [checkpoints.c[f] for f in CHECKPOINT_FIELDS]
    for values in conn.execute(
        select(*cp_columns).where(checkpoints.c.run_id == run.id).order_by(checkpoints.c.seq)
    ):
        row = dict(zip(CHECKPOINT_FIELDS, values, strict=True))
        seq = int(row["seq"])
        exp = cps.pop(seq, None)
        if exp is None:
            if full:
                add(last, f"checkpoint {seq} is not in the trail: no event wrote it")
        elif checkpoint_digest(keys, row, exp.kid) != exp.digest:
            add(exp.n, f"checkpoint {seq} is not what this event recorded: it was edited")
    for seq, exp in sorted(cps.items()):
        if seq >= pruned_below:
            add(exp.n, f"checkpoint {seq}, which this event wrote, was deleted")

    stored = {
        int(values[0]): dict(zip(MESSAGE_FIELDS, values, strict=True))
        for values in conn.execute(
            select(*(messages.c[f] for f in MESSAGE_FIELDS)).where(messages.c.run_id == run.id)
        )
    }
    for first, count, exp in msgs:
        span_rows = [stored.pop(i, None) for i in range(first, first + count)]
        span = f"message {first}" if count == 1 else f"messages {first}-{first + count - 1}"
        if any(r is None for r in span_rows):
            add(exp.n, f"{span}, which this event wrote, {'was' if count == 1 else 'were'} deleted")
        elif messages_digest(keys, [r for r in span_rows if r is not None], exp.kid) != exp.digest:
            add(
                exp.n,
                f"{span} {'is' if count == 1 else 'are'} not what this event recorded: edited",
            )
    if full:
        for idx in sorted(stored):
            add(last, f"message {idx} is not in the trail: no event wrote it")

    for wait in conn.execute(select(waits).where(waits.c.run_id == run.id)).mappings():
        key = (int(wait["seq"]), str(wait["kind"]))
        exp = wts.pop(key, None)
        what = f"the {key[1]} wait at checkpoint {key[0]}"
        if exp is None:
            if full:
                add(last, f"{what} is not in the trail: no event wrote it")
        elif wait_digest(keys, wait, exp.kid) != exp.digest:
            add(
                exp.n,
                f"{what} is not what this event recorded: its decision, who made it or its "
                "terms were edited",
            )
    for (seq, kind), exp in sorted(wts.items()):
        add(exp.n, f"the {kind} wait at checkpoint {seq}, which this event wrote, was deleted")
    return found
