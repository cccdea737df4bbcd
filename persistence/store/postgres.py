"""Postgres: the claim and the common commit each as ONE statement; autocommit reads.

A step on Postgres is two round trips: :meth:`PostgresDialect.claim` (the CAS that
takes the lease, joined with everything the step reads) and
:meth:`PostgresDialect.commit_in_one_statement` (the CAS that commits it, with its
appends in data-modifying CTEs). Values are converted by the columns' own bind and
result processors (the same ones SQLAlchemy uses for an ``insert``), so a JSON value,
a timestamp or a digest is written and read here exactly as everywhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Table,
    column,
    func,
    literal_column,
    select,
    text,
)

from pausepoint.persistence.errors import StaleVersion
from pausepoint.persistence.records import (
    PENDING,
    QUEUED,
    RUNNING,
    AgentRecord,
    Checkpoint,
    Claim,
    NewMessage,
    RunRecord,
    WaitRecord,
)
from pausepoint.persistence.store.dialect import Dialect
from pausepoint.persistence.tables import (
    agents,
    checkpoints,
    events,
    ledger,
    memories,
    runs,
    waits,
)
from pausepoint.persistence.tables import messages as messages_table

Processor = Callable[[Any], Any]
# How long the planner's lexeme statistics are reused by one process (they change only
# when autovacuum or ANALYZE runs).
STATS_SECONDS = 10.0


def _select_list(alias: str, table: Table, prefix: str) -> str:
    return ", ".join(f"{alias}.{c.name} AS {prefix}{c.name}" for c in table.columns)


# The CAS, and what the step reads, in one statement.
CLAIM_SQL = (
    "WITH u AS (UPDATE runs SET status = %(running)s, lease_owner = %(owner)s, "
    "lease_expires_at = %(lease)s, version = version + 1, updated_at = %(now)s "
    "WHERE id = %(id)s AND version = %(version)s AND status = %(queued)s "
    "AND (due_at IS NULL OR due_at <= %(now)s) AND EXISTS (SELECT 1 FROM checkpoints k "
    "WHERE k.run_id = runs.id AND k.seq = runs.seq) RETURNING *) "
    f"SELECT {_select_list('u', runs, 'r_')}, {_select_list('c', checkpoints, 'c_')}, "
    f"{_select_list('a', agents, 'a_')}, {_select_list('w', waits, 'w_')}, "
    "(SELECT array_agg(h.resource ORDER BY h.resource) FROM resource_holders h "
    "WHERE h.run_id = u.id) AS holds "
    "FROM u JOIN checkpoints c ON c.run_id = u.id AND c.seq = u.seq "
    "JOIN agents a ON a.name = u.agent_name "
    "LEFT JOIN LATERAL (SELECT * FROM waits WHERE waits.run_id = u.id "
    "AND waits.seq = u.seq AND waits.status <> %(pending)s LIMIT 1) w ON true"
)


class PostgresDialect(Dialect):
    name = "postgresql"
    claims_in_one_statement = True
    commits_in_one_statement = True

    def __init__(self, engine: Engine) -> None:
        self._sa_dialect = engine.dialect
        self._binds: dict[Column[Any], Processor | None] = {}
        self._results: dict[tuple[Column[Any], int], Processor | None] = {}
        self._sql: dict[tuple[Any, ...], str] = {}
        self._stats: tuple[float, tuple[dict[str, float], float, float]] | None = None

    # ------------------------------------------------------------ conversions

    def bind(self, column: Column[Any], value: Any) -> Any:
        """``value`` as SQLAlchemy would send it for ``column`` (JSON, time, digest)."""
        if column not in self._binds:
            impl = column.type.dialect_impl(self._sa_dialect)
            self._binds[column] = impl.bind_processor(self._sa_dialect)
        process = self._binds[column]
        return value if process is None else process(value)

    def result(self, column: Column[Any], value: Any, type_code: int) -> Any:
        """A raw driver value of ``column`` (of type OID ``type_code``) as SQLAlchemy
        would give it back."""
        key = (column, type_code)
        if key not in self._results:
            impl = column.type.dialect_impl(self._sa_dialect)
            self._results[key] = impl.result_processor(self._sa_dialect, type_code)
        process = self._results[key]
        return value if process is None else process(value)

    # ------------------------------------------------------------------ reads

    @contextmanager
    def reading(self, engine: Engine) -> Iterator[Connection]:
        # READ COMMITTED gives each statement its own snapshot anyway: a transaction
        # around reads would only add BEGIN and COMMIT round trips.
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def snapshot(self, engine: Engine) -> Iterator[Connection]:
        # One snapshot for every statement: a run and its trail read together, even
        # while its steps keep committing.
        with engine.connect() as conn:
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with conn.begin():
                yield conn

    def bound_statement_time(self, conn: Connection, milliseconds: int) -> None:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(milliseconds)}")

    # ------------------------------------------------------------------ claim

    def claim(
        self,
        engine: Engine,
        *,
        run_id: str,
        version: int,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> Claim | None:
        """The claim as ONE statement, one round trip instead of eight: the CAS UPDATE
        ... RETURNING the run, joined with what the step reads (its checkpoint, its
        agent, the wait it resumes from, the slots it holds).

        Once the CAS matched, this worker holds the lease, and what it reads cannot move
        under it: the checkpoint and a fulfilled wait are immutable, slots are held and
        released by the run's own transitions, and rollback refuses a running run. The
        statement is not prepared: its joins are planned for the tables as they are
        now, not with a generic plan made while they were small.
        """
        params = {
            "id": run_id,
            "version": version,
            "owner": owner,
            "now": now,
            "lease": lease_until,
            "queued": QUEUED,
            "running": RUNNING,
            "pending": PENDING,
        }
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            raw: Any = conn.connection.dbapi_connection
            cur = raw.cursor()
            try:
                cur.execute(CLAIM_SQL, params, prepare=False)
                row = cur.fetchone()
                names = [d.name for d in cur.description]
                types = {d.name: d.type_code for d in cur.description}
            except Exception:
                # Bypassing SQLAlchemy here: a dead connection must not go back to the pool.
                if raw.broken:
                    conn.invalidate()
                raise
            finally:
                cur.close()
        if row is None:
            return None
        got = dict(zip(names, row, strict=True))

        def part(prefix: str, table: Table) -> dict[str, Any]:
            return {
                c.name: self.result(c, got[prefix + c.name], types[prefix + c.name])
                for c in table.columns
            }

        resumed = part("w_", waits)
        return Claim(
            run=RunRecord.from_row(part("r_", runs)),
            checkpoint=Checkpoint.from_row(part("c_", checkpoints)),
            agent=AgentRecord.from_row(part("a_", agents)),
            resumed=None if resumed["id"] is None else WaitRecord.from_row(resumed),
            holds=tuple(got["holds"] or ()),
        )

    # ----------------------------------------------------------------- commit

    def commit_in_one_statement(
        self,
        engine: Engine,
        run: RunRecord,
        values: dict[str, Any],
        *,
        expect_status: Sequence[str] | None,
        expect_owner: str | None,
        new_messages: Sequence[tuple[int, NewMessage]],
        seq: int,
        checkpoint: dict[str, Any] | None,
        event_rows: Sequence[dict[str, Any]],
        ledger_rows: Sequence[dict[str, Any]],
        now: datetime,
    ) -> bool:
        """A transition as one statement: one round trip instead of six.

            WITH u AS (UPDATE runs SET ... WHERE id = .. AND version = .. RETURNING id),
                 m AS (INSERT INTO messages SELECT u.id, x.* FROM u, unnest(arrays) x),
                 c AS (INSERT INTO checkpoints SELECT u.id, ... FROM u),
                 e AS (INSERT INTO events SELECT u.id, x.* FROM u, unnest(arrays) x),
                 l AS (INSERT INTO ledger SELECT u.id, ... FROM u)
            SELECT count(*) FROM u

        Every append selects FROM u, so when the CAS matches no row nothing is appended
        and the count is 0; one statement is atomic, so either all of it happens or
        none. The rows go as arrays, so the SQL depends only on which run columns change
        and on which appends there are: it is built once per shape (and psycopg
        prepares it).
        """
        columns = tuple(sorted(values))
        sql = self._commit_sql(
            columns,
            expect_status is not None,
            expect_owner is not None,
            bool(new_messages),
            checkpoint is not None,
            bool(event_rows),
            bool(ledger_rows),
        )
        params: dict[str, Any] = {f"u_{c}": self.bind(runs.c[c], values[c]) for c in columns}
        params.update(
            id=run.id,
            version=run.version,
            seq=seq,
            now=self.bind(runs.c.updated_at, now),
        )
        if expect_status is not None:
            params["status"] = list(expect_status)
        if expect_owner is not None:
            params["owner"] = expect_owner
        if new_messages:
            params["m_idx"] = [idx for idx, _ in new_messages]
            params["m_role"] = [m.role for _, m in new_messages]
            params["m_content"] = [m.content for _, m in new_messages]
            params["m_data"] = [
                self.bind(messages_table.c.data, m.data or None) for _, m in new_messages
            ]
        if checkpoint is not None:
            params["c_step"] = checkpoint["step"]
            params["c_state"] = self.bind(checkpoints.c.state, checkpoint["state"])
            params["c_len"] = checkpoint["history_len"]
            params["c_segments"] = self.bind(checkpoints.c.segments, checkpoint["segments"])
        if event_rows:
            params["e_n"] = [r["n"] for r in event_rows]
            params["e_kind"] = [r["kind"] for r in event_rows]
            params["e_actor"] = [r["actor"] for r in event_rows]
            params["e_data"] = [self.bind(events.c.data, r["data"]) for r in event_rows]
            params["e_hash"] = [self.bind(events.c.hash, r["hash"]) for r in event_rows]
        if ledger_rows:
            (entry,) = ledger_rows  # a transition ends its run at most once
            params["l_kind"] = entry["kind"]
            params["l_data"] = self.bind(ledger.c.data, entry["data"])
            params["l_mac"] = self.bind(ledger.c.mac, entry["mac"])
        with engine.connect() as auto:
            auto = auto.execution_options(isolation_level="AUTOCOMMIT")
            if int(auto.exec_driver_sql(sql, params).scalar_one()) == 1:
                return True
            found = auto.execute(select(runs.c.version).where(runs.c.id == run.id)).scalar()
        raise StaleVersion(run.id, run.version, found)

    def _commit_sql(
        self,
        columns: tuple[str, ...],
        status: bool,
        owner: bool,
        messages: bool,
        checkpoint: bool,
        events: bool,
        ends: bool,
    ) -> str:
        shape = (columns, status, owner, messages, checkpoint, events, ends)
        sql = self._sql.get(shape)
        if sql is not None:
            return sql
        sets = ", ".join(f"{c} = %(u_{c})s" for c in columns)
        where = "id = %(id)s AND version = %(version)s"
        if status:
            where += " AND status = ANY(%(status)s)"
        if owner:
            where += " AND lease_owner = %(owner)s"
        ctes = [f"u AS (UPDATE runs SET {sets} WHERE {where} RETURNING id)"]
        if messages:
            ctes.append(
                "m AS (INSERT INTO messages (run_id, idx, role, content, seq, created_at, data) "
                "SELECT u.id, x.idx, x.role, x.content, %(seq)s, %(now)s, x.data FROM u, "
                "unnest(%(m_idx)s::int[], %(m_role)s::text[], %(m_content)s::text[], "
                "%(m_data)s::jsonb[]) AS x(idx, role, content, data))"
            )
        if checkpoint:
            ctes.append(
                "c AS (INSERT INTO checkpoints "
                "(run_id, seq, step, state, history_len, segments, created_at) "
                "SELECT u.id, %(seq)s, %(c_step)s, %(c_state)s::jsonb, %(c_len)s, "
                "%(c_segments)s::jsonb, %(now)s FROM u)"
            )
        if events:
            ctes.append(
                "e AS (INSERT INTO events (run_id, n, kind, actor, data, hash, created_at) "
                "SELECT u.id, x.n, x.kind, x.actor, x.data, x.hash, %(now)s FROM u, "
                "unnest(%(e_n)s::int[], %(e_kind)s::text[], %(e_actor)s::text[], "
                "%(e_data)s::jsonb[], %(e_hash)s::bytea[]) AS x(n, kind, actor, data, hash))"
            )
        if ends:
            ctes.append(
                "l AS (INSERT INTO ledger (kind, run_id, data, created_at, mac) "
                "SELECT %(l_kind)s, u.id, %(l_data)s::jsonb, %(now)s, %(l_mac)s FROM u)"
            )
        sql = "WITH " + ", ".join(ctes) + " SELECT count(*) FROM u"
        self._sql[shape] = sql
        return sql

    def _tsquery(self, terms: Sequence[str], every: bool) -> ColumnElement[Any]:
        # Each word a bound plainto_tsquery (stemmed, stop words dropped), OR-ed (or
        # AND-ed) together, so no query text is ever tsquery syntax.
        query: ColumnElement[Any] = func.plainto_tsquery("english", terms[0])
        for term in terms[1:]:
            query = query.op("&&" if every else "||")(func.plainto_tsquery("english", term))
        return query

    def search_memories(
        self,
        conn: Connection,
        agent: str,
        terms: Sequence[str],
        where: ColumnElement[bool],
        limit: int,
        *,
        every: bool = False,
        matches: int | None = None,
    ) -> list[tuple[int, float]]:
        query = self._tsquery(terms, every)
        search: ColumnElement[Any] = column("search")
        rank = func.ts_rank_cd(search, query)
        found = (
            select(memories.c.id, rank.label("rank"))
            .where(where, search.op("@@")(query))
            .order_by(literal_column("rank").desc())
            .limit(limit)
        )
        return [(int(i), float(r)) for i, r in conn.execute(found)]

    def term_counts(self, conn: Connection, terms: Sequence[str], cap: int) -> dict[str, int]:
        # From the planner's statistics of the tsvector column (ANALYZE's most common
        # lexemes and their frequencies), not by scanning: a word that is not among them
        # is rarer than the rarest that is. No table is read.
        rows = conn.execute(
            text(
                "SELECT t, tsvector_to_array(to_tsvector('english', t)) "
                "FROM unnest(CAST(:terms AS text[])) AS t"
            ),
            {"terms": list(terms)},
        ).all()
        common, total, floor = self._lexeme_stats(conn)
        if total <= 0:  # never analysed: count (up to cap) instead of estimating
            return self._counted(conn, terms, cap)
        out: dict[str, int] = {}
        for term, lexemes in rows:
            if not lexemes:
                out[term] = 0  # a stop word: it finds nothing
                continue
            # A lexeme ANALYZE did not list is rarer than those it did: Postgres' own
            # estimate for it is min(0.005, the least listed frequency / 2).
            unlisted = min(0.005, floor / 2)
            share = min(common.get(x, unlisted) for x in lexemes)
            out[term] = min(cap, max(1, int(share * total)))
        return out

    def _counted(self, conn: Connection, terms: Sequence[str], cap: int) -> dict[str, int]:
        parts = ", ".join(
            f"(SELECT count(*) FROM (SELECT 1 FROM memories WHERE search @@ "
            f"plainto_tsquery('english', :t{i}) LIMIT :cap) s{i})"
            for i in range(len(terms))
        )
        values: dict[str, Any] = {"cap": cap, **{f"t{i}": t for i, t in enumerate(terms)}}
        row = conn.execute(text(f"SELECT {parts}"), values).one()
        return {t: int(n) for t, n in zip(terms, row, strict=True)}

    def _lexeme_stats(self, conn: Connection) -> tuple[dict[str, float], float, float]:
        """(lexeme -> share of rows holding it, rows, share below which none is listed),
        read again when ``STATS_SECONDS`` old."""
        now = time.monotonic()
        if self._stats is not None and now - self._stats[0] < STATS_SECONDS:
            return self._stats[1]
        row = conn.execute(
            text(
                "SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, "
                "c.reltuples FROM pg_class c LEFT JOIN pg_stats s ON s.tablename = c.relname "
                "AND s.schemaname = current_schema() AND s.attname = 'search' "
                "WHERE c.oid = 'memories'::regclass"
            )
        ).first()
        common: dict[str, float] = {}
        rows, floor = 0.0, 0.0
        if row is not None:
            elems, freqs, reltuples = row
            rows = max(0.0, float(reltuples or 0))
            if elems and freqs:
                # The array ends with the minimum, maximum and null frequencies.
                common = dict(zip(elems, freqs[: len(elems)], strict=False))
                floor = float(freqs[len(elems)]) if len(freqs) > len(elems) else 0.0
        self._stats = (now, (common, rows, floor))
        return common, rows, floor
