"""An agent's long-term memory: writing it (in a step's commit), recalling it by
relevance, recency and importance, listing, superseding, retracting and forgetting it.

A memory is written by the commit of the step that remembered it (``write_memories``,
called inside that transaction), so a retried step writes it once and a failed one not
at all; its ``remembered`` event in the run's trail names the memory's id, kind,
subject and key, never its content, so that ``forget`` can erase the content while
the hash-chained trail stays whole.

A newer memory with the same (agent, subject, key) supersedes the current one, which
stays, marked, for audit. A rollback past the step that wrote a memory retracts it
(kept, marked) and makes current again what it had superseded. A fork shares the
agent's memories: there is nothing to copy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from pausepoint.persistence import queries
from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.jsonvalues import check_text
from pausepoint.persistence.records import (
    MEMORY_KINDS,
    MemoryRecord,
    NewEvent,
    NewMemory,
    Recalled,
    SummaryRecord,
)
from pausepoint.persistence.store.core import StoreCore
from pausepoint.persistence.tables import memories, memory_erasures, summaries

# How a candidate's score is made: relevance to the query leads, recency and
# importance break near-ties. Recency halves every RECENCY_HALF_LIFE_DAYS.
RELEVANCE_WEIGHT = 0.75
RECENCY_WEIGHT = 0.15
IMPORTANCE_WEIGHT = 0.10
RECENCY_HALF_LIFE_DAYS = 30.0
# Full-text candidates ranked per recall; for a query with no words to search, the
# newest memories.
CANDIDATES = 40
RECENT_CANDIDATES = 8
MAX_TERMS = 24
# At most about this many memories are scored per recall (see MemoryRoom._search).
RANKED_ROWS = 500
MAX_CONTENT = 20_000
MAX_PAGE = 500

_WORDS = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    """a an and are as at be but by can did do does for from had has have he her his how i
    if in into is it its me my no not of on or our she so than that the their them then
    there these they this to was we were what when where which who whom why will with
    would you your""".split()
)


def search_terms(text: str) -> list[str]:
    """The query's words that can find something: lower-cased, no stop words, no repeats."""
    seen: dict[str, None] = {}
    for word in _WORDS.findall(text.lower()):
        if len(word) > 1 and word not in STOPWORDS:
            seen.setdefault(word[:64], None)
        if len(seen) >= MAX_TERMS:
            break
    return list(seen)


def check_memory(m: NewMemory) -> None:
    if m.kind not in MEMORY_KINDS:
        raise InvalidInput(f"memory kind must be one of {', '.join(MEMORY_KINDS)}, not {m.kind!r}")
    if not isinstance(m.content, str) or not m.content.strip():
        raise InvalidInput("a memory needs some content")
    if len(m.content) > MAX_CONTENT:
        raise InvalidInput(f"a memory is at most {MAX_CONTENT:,} characters")
    check_text(m.content, "a memory")
    for name in ("subject", "key"):
        value = getattr(m, name)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
            raise InvalidInput(f"a memory's {name} is a string of 1 to 200 characters")
        check_text(value, f"a memory's {name}")
    if m.supersedes is not None and (
        not isinstance(m.supersedes, int) or isinstance(m.supersedes, bool) or m.supersedes < 1
    ):
        raise InvalidInput("a memory supersedes another by its id, a positive integer")
    if m.importance is not None and not (
        isinstance(m.importance, int | float) and 0 <= m.importance <= 1
    ):
        raise InvalidInput("a memory's importance is a number from 0 to 1")


def write_memories(
    conn: Connection,
    agent: str,
    new: Sequence[NewMemory],
    *,
    run_id: str | None,
    seq: int | None,
    now: datetime,
    actor: str,
) -> list[NewEvent]:
    """Insert ``new`` for ``agent`` (superseding by key); the events that record them."""
    events = []
    for m in new:
        check_memory(m)
        memory_id = conn.execute(
            insert(memories)
            .values(
                agent_name=agent,
                kind=m.kind,
                subject=m.subject,
                key=m.key,
                content=m.content,
                importance=m.importance,
                run_id=run_id,
                seq=seq,
                actor=actor,
                created_at=now,
            )
            .returning(memories.c.id)
        ).scalar_one()
        data: dict[str, Any] = {"memory": memory_id, "kind": m.kind}
        if m.subject is not None:
            data["subject"] = m.subject
        older: list[int] = []
        if m.key is not None:
            data["key"] = m.key
            older = _supersede(conn, agent, m.subject, m.key, memory_id)
        if m.supersedes is not None:
            replaced = conn.execute(
                update(memories)
                .where(
                    memories.c.id == m.supersedes,
                    memories.c.agent_name == agent,
                    memories.c.superseded_by.is_(None),
                    memories.c.retracted_at.is_(None),
                )
                .values(superseded_by=memory_id)
            ).rowcount
            if replaced != 1:
                raise InvalidInput(
                    f"memory {m.supersedes} is not a current memory of agent {agent!r}"
                )
            older.append(m.supersedes)
        if older:
            data["supersedes"] = older
        events.append(NewEvent("remembered", data))
    return events


def _same_key(agent: str, subject: str | None, key: str) -> Any:
    return and_(
        memories.c.agent_name == agent,
        memories.c.subject.is_(None) if subject is None else memories.c.subject == subject,
        memories.c.key == key,
    )


def _supersede(
    conn: Connection, agent: str, subject: str | None, key: str, newer: int
) -> list[int]:
    where = and_(
        _same_key(agent, subject, key),
        memories.c.id != newer,
        memories.c.superseded_by.is_(None),
        memories.c.retracted_at.is_(None),
    )
    older = list(conn.execute(select(memories.c.id).where(where)).scalars())
    if older:
        conn.execute(update(memories).where(memories.c.id.in_(older)).values(superseded_by=newer))
    return older


def retract_memories(conn: Connection, run_id: str, after_seq: int, now: datetime) -> list[int]:
    """A rollback to ``after_seq``: the run's later memories are retracted (kept, marked),
    and what they superseded is current again (unless something newer still is)."""
    gone = list(
        conn.execute(
            select(memories.c.id).where(
                memories.c.run_id == run_id,
                memories.c.seq > after_seq,
                memories.c.retracted_at.is_(None),
            )
        ).scalars()
    )
    if not gone:
        return []
    conn.execute(update(memories).where(memories.c.id.in_(gone)).values(retracted_at=now))
    restored = conn.execute(
        select(memories).where(memories.c.superseded_by.in_(gone), memories.c.id.not_in(gone))
    ).mappings()
    for row in list(restored):
        newest = None
        if row["key"] is not None:
            newest = conn.execute(
                select(func.max(memories.c.id)).where(
                    _same_key(row["agent_name"], row["subject"], row["key"]),
                    memories.c.id > row["id"],
                    memories.c.retracted_at.is_(None),
                )
            ).scalar()
        conn.execute(
            update(memories).where(memories.c.id == row["id"]).values(superseded_by=newest)
        )
    return gone


class MemoryRoom(StoreCore):
    def remember(
        self, agent: str, memory: NewMemory, *, actor: str, run_id: str | None = None
    ) -> MemoryRecord:
        """Write one memory outside a step (an operator, an import). Steps use
        ``ctx.remember``, which writes with the step's commit."""
        with self.write() as conn:
            queries.get_agent(conn, agent)
            write_memories(
                conn, agent, [memory], run_id=run_id, seq=None, now=self.clock(), actor=actor
            )
            row = conn.execute(
                select(memories)
                .where(memories.c.agent_name == agent)
                .order_by(memories.c.id.desc())
                .limit(1)
            ).mappings()
            return MemoryRecord.from_row(row.one())

    def memory(self, memory_id: int) -> MemoryRecord | None:
        with self.read() as conn:
            row = conn.execute(select(memories).where(memories.c.id == memory_id)).mappings()
            found = row.first()
            return MemoryRecord.from_row(found) if found else None

    def memories(
        self,
        agent: str,
        *,
        subject: str | None = None,
        kind: str | None = None,
        include_superseded: bool = False,
        before: int | None = None,
        limit: int = 50,
    ) -> list[MemoryRecord]:
        """An agent's memories, newest first; page with ``before`` = the last id seen."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}")
        query = select(memories).where(memories.c.agent_name == agent)
        if subject is not None:
            query = query.where(memories.c.subject == subject)
        if kind is not None:
            query = query.where(memories.c.kind == kind)
        if not include_superseded:
            query = query.where(
                memories.c.superseded_by.is_(None), memories.c.retracted_at.is_(None)
            )
        if before is not None:
            query = query.where(memories.c.id < before)
        with self.read() as conn:
            rows = conn.execute(query.order_by(memories.c.id.desc()).limit(limit)).mappings()
            return [MemoryRecord.from_row(r) for r in rows]

    def recall(
        self,
        agent: str,
        query: str,
        *,
        subject: str | None = None,
        limit: int = 10,
        now: datetime | None = None,
    ) -> list[Recalled]:
        """The agent's current memories that best fit ``query``, best first.

        With ``subject``, only that subject's memories and those about no subject.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}")
        now = now or self.clock()
        terms = search_terms(query)
        current = and_(
            memories.c.agent_name == agent,
            memories.c.superseded_by.is_(None),
            memories.c.retracted_at.is_(None),
        )
        if subject is not None:
            current = and_(
                current, or_(memories.c.subject == subject, memories.c.subject.is_(None))
            )
        with self.read() as conn:
            # Most agents in a loop have nothing to recall: one indexed look first, not the
            # search and its term statistics before every model call.
            if conn.execute(select(memories.c.id).where(current).limit(1)).first() is None:
                return []
            found = self._search(conn, agent, terms, current) if terms else []
            relevance = dict(found)
            ids = list(relevance)
            if not terms:
                # Nothing to search for ("what happened last time?"): the newest.
                ids = list(
                    conn.execute(
                        select(memories.c.id)
                        .where(current)
                        .order_by(memories.c.id.desc())
                        .limit(RECENT_CANDIDATES)
                    ).scalars()
                )
            rows = (
                {
                    r["id"]: MemoryRecord.from_row(r)
                    for r in conn.execute(select(memories).where(memories.c.id.in_(ids))).mappings()
                }
                if ids
                else {}
            )
        top = max(relevance.values(), default=0.0) or 1.0
        scored = []
        for memory_id in ids:
            m = rows.get(memory_id)
            if m is None:
                continue
            rel = max(0.0, relevance.get(memory_id, 0.0)) / top
            age = max(0.0, (now - m.created_at).total_seconds() / 86400)
            recency = math.pow(0.5, age / RECENCY_HALF_LIFE_DAYS)
            importance = m.importance if m.importance is not None else 0.3
            score = (
                RELEVANCE_WEIGHT * rel + RECENCY_WEIGHT * recency + IMPORTANCE_WEIGHT * importance
            )
            scored.append(Recalled(m, round(score, 6), round(rel, 6), round(recency, 6)))
        scored.sort(key=lambda r: (-r.score, -r.memory.id))
        return scored[:limit]

    def _search(
        self, conn: Connection, agent: str, terms: list[str], current: Any
    ) -> list[tuple[int, float]]:
        """Full-text candidates, ranked by the index, in bounded work.

        Neither FTS5 nor Postgres skips documents the way Lucene's WAND does: both score
        every memory that holds any query word, so one everyday word would make a recall
        among 100,000 memories score most of them. So each word's matches are counted
        first (up to ``RANKED_ROWS``), and the rarest words, which carry the most weight
        in BM25 anyway, are ranked together while their matches add up to at most
        ``RANKED_ROWS``. When even the rarest word is that common, memories holding all
        the words (a small intersection) are ranked instead."""
        counts = self.dialect.term_counts(conn, terms, RANKED_ROWS)
        present = sorted((t for t in terms if counts[t]), key=lambda t: counts[t])
        if not present:
            return []
        if len(present) == 1:
            # One word: its matches are what was asked for, however many they are.
            return self.dialect.search_memories(conn, agent, present, current, CANDIDATES)
        if counts[present[0]] >= RANKED_ROWS:
            # Memories with every word first, then (if those are few) with the two rarest.
            found: dict[int, float] = {}
            for words in (present, present[:2]):
                if len(found) < RECENT_CANDIDATES:
                    for memory_id, rank in self.dialect.search_memories(
                        conn, agent, words, current, CANDIDATES, every=True
                    ):
                        found.setdefault(memory_id, rank)
            return list(found.items())[:CANDIDATES]
        chosen: list[str] = []
        total = 0
        for t in present:
            if chosen and total + counts[t] > RANKED_ROWS:
                break
            chosen.append(t)
            total += counts[t]
        return self.dialect.search_memories(
            conn, agent, chosen, current, CANDIDATES, matches=RANKED_ROWS
        )

    def forget(self, agent: str, subject: str, *, actor: str, reason: str = "") -> int:
        """Erase every memory of ``agent`` about ``subject`` (content and all); how many.

        The erasure itself is recorded (who, when, why, how many) in memory_erasures."""
        if not subject:
            raise InvalidInput("forget needs the subject whose memories are to be erased")
        with self.write() as conn:
            queries.get_agent(conn, agent)
            where = and_(memories.c.agent_name == agent, memories.c.subject == subject)
            count = int(
                conn.execute(select(func.count()).select_from(memories).where(where)).scalar_one()
            )
            ids = select(memories.c.id).where(where).scalar_subquery()
            conn.execute(
                update(memories).where(memories.c.superseded_by.in_(ids)).values(superseded_by=None)
            )
            conn.execute(delete(memories).where(where))
            self.dialect.after_erase(conn)
            conn.execute(
                insert(memory_erasures).values(
                    agent_name=agent,
                    subject=subject,
                    count=count,
                    actor=actor,
                    reason=reason,
                    created_at=self.clock(),
                )
            )
            return count

    def prune_memories(
        self,
        *,
        older_than: datetime | None,
        superseded_older_than: datetime | None,
        dry_run: bool = False,
        batch: int = 1000,
    ) -> int:
        """Retention: delete memories created before ``older_than``, and superseded or
        retracted ones created before ``superseded_older_than``; how many (would) go."""
        clauses = []
        if older_than is not None:
            clauses.append(memories.c.created_at < older_than)
        if superseded_older_than is not None:
            clauses.append(
                and_(
                    memories.c.created_at < superseded_older_than,
                    or_(memories.c.superseded_by.isnot(None), memories.c.retracted_at.isnot(None)),
                )
            )
        if not clauses:
            return 0
        old = or_(*clauses)
        if dry_run:
            with self.read() as conn:
                return int(
                    conn.execute(select(func.count()).select_from(memories).where(old)).scalar_one()
                )
        removed = 0
        while True:  # in short transactions, so live steps are never held up for long
            with self.write() as conn:
                ids = list(
                    conn.execute(
                        select(memories.c.id).where(old).order_by(memories.c.id).limit(batch)
                    ).scalars()
                )
                if not ids:
                    return removed
                conn.execute(delete(memories).where(memories.c.id.in_(ids)))
            removed += len(ids)

    def erasures(self, agent: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(
                select(memory_erasures)
                .where(memory_erasures.c.agent_name == agent)
                .order_by(memory_erasures.c.id)
            ).mappings()
            return [dict(r) for r in rows]

    def summary(self, run_id: str, seq: int) -> SummaryRecord | None:
        with self.read() as conn:
            row = conn.execute(
                select(summaries).where(summaries.c.run_id == run_id, summaries.c.seq == seq)
            ).mappings()
            found = row.first()
            return SummaryRecord.from_row(found) if found else None

    def summaries(self, run_id: str) -> list[SummaryRecord]:
        with self.read() as conn:
            rows = conn.execute(
                select(summaries).where(summaries.c.run_id == run_id).order_by(summaries.c.seq)
            ).mappings()
            return [SummaryRecord.from_row(r) for r in rows]
