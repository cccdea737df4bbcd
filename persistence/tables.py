"""Every table of the store, as SQLAlchemy Core tables on one ``MetaData``.

The schema is the contract between processes, so it is defined once, here, and
Alembic's revisions must agree with it (``tests/contract/test_migrations.py``).

Append-only tables (checkpoints, messages, events) are keyed by ``(run_id, n)``
so writing one more row never touches the rows before it: a step costs the
same at message 10 and at message 10,000.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# Named constraints so Alembic can drop and alter them on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSONB on Postgres (smaller, comparable), plain JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")
# For columns that are often empty: Python None is SQL NULL, not the JSON text 'null'.
OptionalJson = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    Postgres keeps ``timestamptz``; SQLite has no time zones, so values are
    stored as naive UTC and made aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


Timestamp = UTCDateTime


class HexDigest(TypeDecorator[str]):
    """A hash as raw bytes in the store and as hex in Python ("" for none yet)."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else bytes.fromhex(value)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> str | None:
        return None if value is None else bytes(value).hex()


agents = Table(
    "agents",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("persona", Text, nullable=False, default=""),
    Column("instruction", Text, nullable=False, default=""),
    Column("strategy", Text, nullable=False, default=""),
    Column("model", Json, nullable=False, default=dict),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "agent_name",
        String(200),
        ForeignKey("agents.name", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("workflow", String(200), nullable=False),
    Column("task", Text, nullable=False, default=""),
    Column("input", Json, nullable=False, default=dict),
    # queued | running | waiting | completed | failed | cancelled (+ active/paused for
    # the seed API's script sessions, which no worker ever advances).
    Column("status", String(20), nullable=False),
    Column("step", String(200), nullable=True),
    # Sequence number of the run's latest checkpoint.
    Column("seq", Integer, nullable=False, default=0),
    # Compare-and-swap counter: every transition moves it by exactly one.
    Column("version", Integer, nullable=False, default=0),
    Column("attempt", Integer, nullable=False, default=0),
    # Length of the run's conversation as of its latest checkpoint (logical messages).
    Column("history_len", Integer, nullable=False, default=0),
    # Messages stored for the run, including those a rollback took out of its context;
    # the next message gets this physical index.
    Column("message_count", Integer, nullable=False, default=0),
    # The latest checkpoint's conversation as physical [start, stop) ranges of messages.idx,
    # or NULL when it is simply messages[0:history_len] (no rollback ever cut it).
    Column("segments", OptionalJson, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", Timestamp, nullable=True),
    # A queued run should have a message in flight from due_at on; published_at is
    # when the last one was sent. The sweeper re-sends when due and not recently sent:
    # the run row is its own outbox.
    Column("due_at", Timestamp, nullable=True),
    Column("published_at", Timestamp, nullable=True),
    Column("result", OptionalJson, nullable=True),
    Column("error", Text, nullable=True),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("parent_run_id", String(32), nullable=True),
    Column("parent_seq", Integer, nullable=True),
    # Head of the run's hash-chained audit trail.
    Column("event_count", Integer, nullable=False, default=0),
    Column("event_hash", HexDigest, nullable=False, default=""),
    Column("legal_hold", Boolean, nullable=False, default=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=True),
    # Retention: when the run's state was marked for removal, and how far that got
    # ("pending": its checkpoints and messages may still be there; "done": only the run
    # row, its waits' ids and its audit trail remain).
    Column("purged_at", Timestamp, nullable=True),
    Column("purge_state", String(10), nullable=True),
    # Postgres: room in each page for a new version of a row, so an update that changes
    # no indexed column (an inline step) is a HOT update (migration 0005).
    postgresql_with={"fillfactor": 80},
)


def partial(table: Table, name: str, *columns: str, present: str) -> Index:
    """An index over only the rows whose ``present`` column is set (on both backends).

    The sweeper's and retention's queries compare that column (``due_at <= now``,
    ``finished_at < cutoff``...), which implies it is not NULL, so both planners use
    the index; the many rows where it is NULL (a parked run has no due time, lease,
    finish or parent) cost it nothing. See bench/README.md, parked runs.
    """
    where = table.c[present].isnot(None)
    return Index(
        name,
        *(table.c[c] for c in columns),
        sqlite_where=where,
        postgresql_where=where,
    )


partial(runs, "ix_runs_status_due_at", "status", "due_at", present="due_at")
partial(
    runs,
    "ix_runs_status_lease_expires_at",
    "status",
    "lease_expires_at",
    present="lease_expires_at",
)
Index("ix_runs_agent_name_created_at", runs.c.agent_name, runs.c.created_at)
# GET /runs?status=... lists newest first. created_at never changes, so a step that
# keeps its status (an inline step) leaves every index alone: a HOT update on Postgres.
Index("ix_runs_status_created_at", runs.c.status, runs.c.created_at)
partial(runs, "ix_runs_finished_at", "finished_at", present="finished_at")
partial(
    runs, "ix_runs_purge_state_finished_at", "purge_state", "finished_at", present="purge_state"
)
partial(runs, "ix_runs_parent_run_id", "parent_run_id", present="parent_run_id")

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("step", String(200), nullable=True),
    Column("state", Json, nullable=False),
    # The conversation as of this checkpoint: history_len messages, which are
    # messages[0:history_len] unless `segments` lists their physical ranges.
    Column("history_len", Integer, nullable=False),
    Column("segments", OptionalJson, nullable=True),
    Column("created_at", Timestamp, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("role", String(20), nullable=False),
    Column("content", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # OpenAI's other message fields, when there are any: an assistant's ``tool_calls``,
    # a tool result's ``tool_call_id`` (and ``name``). NULL for a plain message.
    Column("data", OptionalJson, nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("n", Integer, primary_key=True),
    Column("kind", String(40), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("data", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # SHA-256 over the previous event's hash and this event (persistence/audit.py), as
    # 32 raw bytes. The previous hash is not stored again: it is the row before's.
    Column("hash", LargeBinary, nullable=False),
    # SQLite: the rows live in the primary key's B-tree, so (run_id, n) is not stored a
    # second time in an index. Only for events, which are small: rows past ~1/20 of a
    # page (a long message, a large state) fill such a B-tree badly (+38% for messages
    # of 300-6,000 characters, measured), so messages and checkpoints keep their rowid.
    sqlite_with_rowid=False,
)
# No index on created_at: nothing reads events across runs by time, and a parked run
# would pay for it in every one of its events (bench/README.md, parked runs).

waits = Table(
    "waits",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    # Checkpoint the run parked at; the resumed step reads the outcome of this wait.
    Column("seq", Integer, nullable=False),
    Column("kind", String(20), nullable=False),
    # pending | fulfilled | expired | cancelled
    Column("status", String(20), nullable=False),
    Column("resume_step", String(200), nullable=False),
    Column("approver_group", String(200), nullable=True),
    Column("prompt", Text, nullable=False, default=""),
    Column("deadline", Timestamp, nullable=True),
    # fail | default | escalate
    Column("on_timeout", String(20), nullable=False, default="fail"),
    Column("default_outcome", OptionalJson, nullable=True),
    # approval: at the deadline, hand the decision to this group for escalate_after more seconds.
    Column("escalate_to", String(200), nullable=True),
    Column("escalate_after", Float, nullable=True),
    # callback: which source (and so which HMAC secret) the callback comes from.
    Column("source", String(100), nullable=True),
    # event: resumed by POST /events/{event_name} whose key equals match_key.
    Column("event_name", String(200), nullable=True),
    Column("match_key", String(200), nullable=True),
    # resource: the named capacity the run waits for.
    Column("resource", String(200), nullable=True),
    Column("token_hash", String(64), nullable=True, unique=True),
    Column("outcome", OptionalJson, nullable=True),
    Column("decided_by", String(200), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("decided_at", Timestamp, nullable=True),
    UniqueConstraint("run_id", "seq", "kind"),
)
# A run's waits are found through uq_waits_run_id_seq_kind (run_id leads it).
partial(waits, "ix_waits_status_deadline", "status", "deadline", present="deadline")
partial(
    waits,
    "ix_waits_event_name_match_key_status",
    "event_name",
    "match_key",
    "status",
    present="event_name",
)
partial(waits, "ix_waits_resource_status_id", "resource", "status", "id", present="resource")

# Named capacities (an LLM quota, a GPU pool): in_use never exceeds capacity, because
# a slot is taken only by `UPDATE ... SET in_use = in_use + 1 WHERE in_use < capacity`.
resources = Table(
    "resources",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("capacity", Integer, nullable=False),
    Column("in_use", Integer, nullable=False, default=0),
    Column("updated_at", Timestamp, nullable=False),
)

# Who holds a slot: a run holds it for one step, from the checkpoint `seq` on.
resource_holders = Table(
    "resource_holders",
    metadata,
    Column(
        "resource",
        String(200),
        ForeignKey("resources.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("acquired_at", Timestamp, nullable=False),
)
Index("ix_resource_holders_run_id", resource_holders.c.run_id)

# What arrived for a wait that does not exist yet: a callback posted while its run was
# still committing the step that handed out the URL, or an event no run waits for yet.
# Delivered when the run parks; never lost.
deliveries = Table(
    "deliveries",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("kind", String(20), nullable=False),
    Column("token_hash", String(64), nullable=True, unique=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=True),
    Column("event_name", String(200), nullable=True),
    Column("match_key", String(200), nullable=True),
    Column("source", String(100), nullable=True),
    Column("actor", String(200), nullable=False),
    Column("payload", Json, nullable=False),
    Column("received_at", Timestamp, nullable=False),
    Column("consumed_at", Timestamp, nullable=True),
)
Index(
    "ix_deliveries_event_name_match_key_received_at",
    deliveries.c.event_name,
    deliveries.c.match_key,
    deliveries.c.received_at,
)

# Store-wide values, such as the secret that callback tokens are derived from.
meta = Table(
    "meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per retention pass (`pausepoint gc`, or beat's daily one): what it removed.
cleanups = Table(
    "cleanups",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("actor", String(200), nullable=False),
    # running | done (a row left "running" was interrupted; the next pass finishes its work)
    Column("status", String(20), nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("policy", Json, nullable=False),
    Column("removed", Json, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=True),
)

# An agent's long-term memory: facts, decisions and episode summaries that outlive runs.
# Written in the commit of the step that remembers them (run_id, seq); a newer memory of
# the same (agent, subject, key) supersedes the older, which stays, marked, for audit;
# a rollback past a memory retracts it (kept, marked). Searched by the dialect's full-text
# index: FTS5 on SQLite, a tsvector column with GIN on Postgres (both made by migration
# 0006, outside this metadata: see SEARCH_OBJECTS).
memories = Table(
    "memories",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column(
        "agent_name", String(200), ForeignKey("agents.name", ondelete="CASCADE"), nullable=False
    ),
    # fact | decision | episode | note
    Column("kind", String(20), nullable=False),
    # Whom or what it is about (a customer, a case), and which of its attributes.
    Column("subject", String(200), nullable=True),
    Column("key", String(200), nullable=True),
    Column("content", Text, nullable=False),
    Column("importance", Float, nullable=True),
    # Where it came from: the run and the checkpoint whose commit wrote it (no foreign
    # key: a memory outlives its run's retention).
    Column("run_id", String(32), nullable=True),
    Column("seq", Integer, nullable=True),
    # Who wrote it: the worker whose step committed it, or the operator or script.
    Column("actor", String(200), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("superseded_by", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("retracted_at", Timestamp, nullable=True),
)
Index("ix_memories_agent_name_created_at", memories.c.agent_name, memories.c.created_at)
partial(
    memories, "ix_memories_agent_name_subject_key", "agent_name", "subject", "key", present="key"
)
partial(memories, "ix_memories_run_id_seq", "run_id", "seq", present="run_id")

# A run's compacted conversation: the summary of its logical messages [0, covers), written
# by the commit of checkpoint ``seq``. A checkpoint's state names the summary in effect
# (``state["__context__"]``: its run and seq), so a rollback or a fork sees its
# checkpoint's own.
summaries = Table(
    "summaries",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("covers", Integer, nullable=False),
    Column("content", Text, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

# Erasures on request (``forget``): who erased which subject's memories, when and why.
# The memories themselves are gone; this row says they were.
memory_erasures = Table(
    "memory_erasures",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("agent_name", String(200), nullable=False),
    Column("subject", String(200), nullable=True),
    Column("count", Integer, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", Timestamp, nullable=False),
)
# memory_erasures has no index beyond its key, nor memories one on superseded_by: both
# are read only by rare operations (an erasure, a rollback), and every index costs every
# store a page before its first row (the Postgres size benchmark counts them).

# The store-wide ledger (persistence/ledger.py): one entry when a run is created, ends,
# loses its state to retention or has its trail archived, written in the transaction
# that does it, each with its own MAC (under the audit key). The sweeper seals entries
# into one chain (``n``, in the order it finds them), whose head is ``ledger_head``; an
# anchor (``pausepoint audit anchor``) copies that head outside the database. No foreign
# key: an entry outlives its run. Append-only: triggers (migration 0008) refuse any
# DELETE, and any UPDATE but the seal.
ledger = Table(
    "ledger",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    # created | ended | purged | archived
    Column("kind", String(20), nullable=False),
    Column("run_id", String(32), nullable=False),
    Column("data", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # 16 bytes of HMAC-SHA256 (SHA-256 without a key) over the entry.
    Column("mac", LargeBinary, nullable=False),
    # Its place in the sealed chain and the chain's link there (16 bytes of the MAC
    # over the previous link, n and this entry's MAC); NULL until the sweeper seals it.
    Column("n", BigInteger, nullable=True),
    Column("link", LargeBinary, nullable=True),
)
# What the sealer reads (entries not yet sealed: a handful, so a partial index), and a
# run's entries (verifying one run; the trail's delete trigger: was it archived?).
Index(
    "ix_ledger_unsealed",
    ledger.c.id,
    sqlite_where=ledger.c.n.is_(None),
    postgresql_where=ledger.c.n.is_(None),
)
Index("ix_ledger_run_id", ledger.c.run_id)

# The sealed ledger's head: how many entries are chained, and the last chain hash.
ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("hash", HexDigest, nullable=False),
    Column("sealed_at", Timestamp, nullable=True),
)

# The full-text objects each dialect adds to ``memories`` in migration 0006, which this
# metadata does not describe (so the model/migration comparison leaves them out).
SEARCH_OBJECTS = frozenset(
    {
        "memories_fts",
        "memories_fts_data",
        "memories_fts_idx",
        "memories_fts_docsize",
        "memories_fts_config",
        "memories_fts_content",
        "ix_memories_search",
        "search",
    }
)


def described(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name``: leave out the search objects the dialects add."""
    return name not in SEARCH_OBJECTS


ALL_TABLES = (
    agents,
    runs,
    checkpoints,
    messages,
    events,
    waits,
    resources,
    resource_holders,
    deliveries,
    meta,
    cleanups,
    memories,
    summaries,
    memory_erasures,
    ledger,
    ledger_head,
)
