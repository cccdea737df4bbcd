"""Plain, immutable records the store hands out, and the specs it takes in.

Nothing here talks to the database: these are the values that cross the
boundary between ``persistence`` and the layers above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

# Run statuses. ACTIVE and PAUSED belong to the seed API's script sessions.
QUEUED = "queued"
RUNNING = "running"
WAITING = "waiting"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
ACTIVE = "active"
PAUSED = "paused"
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
RUN_STATUSES = (QUEUED, RUNNING, WAITING, COMPLETED, FAILED, CANCELLED, ACTIVE, PAUSED)

# Wait kinds and statuses.
APPROVAL = "approval"
CALLBACK = "callback"
EVENT = "event"
RESOURCE = "resource"
TIMER = "timer"
PENDING = "pending"
FULFILLED = "fulfilled"
EXPIRED = "expired"
CANCELLED_WAIT = "cancelled"

# The workflow name of the seed API's script sessions.
SESSION_WORKFLOW = "__session__"


class Row:
    """Builds a record dataclass from a result row with the same column names."""

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{f: row[f] for f in fields})


@dataclass(frozen=True)
class AgentRecord(Row):
    name: str
    persona: str
    instruction: str
    strategy: str
    model: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RunRecord(Row):
    id: str
    agent_name: str
    workflow: str
    task: str
    input: dict[str, Any]
    status: str
    step: str | None
    seq: int
    version: int
    attempt: int
    history_len: int
    message_count: int
    segments: list[list[int]] | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    due_at: datetime | None
    published_at: datetime | None
    result: Any
    error: str | None
    idempotency_key: str | None
    parent_run_id: str | None
    parent_seq: int | None
    event_count: int
    event_hash: str
    legal_hold: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    purged_at: datetime | None
    purge_state: str | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class Checkpoint(Row):
    run_id: str
    seq: int
    step: str | None
    state: dict[str, Any]
    history_len: int
    segments: list[list[int]] | None
    created_at: datetime


@dataclass(frozen=True)
class Message(Row):
    idx: int
    role: str
    content: str
    seq: int
    created_at: datetime
    # OpenAI's other fields of this message (``tool_calls``, ``tool_call_id``), if any.
    data: dict[str, Any] | None = None

    def as_chat(self) -> dict[str, Any]:
        return chat_message(self.role, self.content, self.data)


@dataclass(frozen=True)
class Event(Row):
    run_id: str
    n: int
    kind: str
    actor: str
    data: dict[str, Any]
    created_at: datetime
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class WaitRecord(Row):
    id: int
    run_id: str
    seq: int
    kind: str
    status: str
    resume_step: str
    approver_group: str | None
    prompt: str
    deadline: datetime | None
    on_timeout: str
    default_outcome: Any
    escalate_to: str | None
    escalate_after: float | None
    source: str | None
    event_name: str | None
    match_key: str | None
    resource: str | None
    outcome: Any
    decided_by: str | None
    created_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True)
class NewMessage:
    role: str
    content: str
    data: dict[str, Any] | None = None

    def as_chat(self) -> dict[str, Any]:
        return chat_message(self.role, self.content, self.data)


# The fields a stored message may carry beside its role and text (OpenAI's chat format).
MESSAGE_FIELDS = ("tool_calls", "tool_call_id", "name")


def chat_message(role: str, content: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """A stored message in OpenAI's chat format. An assistant turn that only calls
    tools has no text: its content is then ``None``, as OpenAI sends it."""
    message: dict[str, Any] = {"role": role, "content": content}
    if data:
        message.update((k, v) for k, v in data.items() if k in MESSAGE_FIELDS)
        if not content and message.get("tool_calls"):
            message["content"] = None
    return message


@dataclass(frozen=True)
class NewEvent:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


MEMORY_KINDS = ("fact", "decision", "episode", "note")


@dataclass(frozen=True)
class NewMemory:
    """What a step remembers: written with its commit, exactly once."""

    content: str
    kind: str = "fact"
    subject: str | None = None
    key: str | None = None
    importance: float | None = None
    # An older memory (of the same agent) this one replaces, when it has no key.
    supersedes: int | None = None


@dataclass(frozen=True)
class MemoryRecord(Row):
    id: int
    agent_name: str
    kind: str
    subject: str | None
    key: str | None
    content: str
    importance: float | None
    run_id: str | None
    seq: int | None
    actor: str
    created_at: datetime
    superseded_by: int | None
    retracted_at: datetime | None

    @property
    def current(self) -> bool:
        return self.superseded_by is None and self.retracted_at is None


@dataclass(frozen=True)
class Recalled:
    """A memory found for a query, with how well it fits (0 to 1) and why."""

    memory: MemoryRecord
    score: float
    relevance: float
    recency: float


@dataclass(frozen=True)
class NewSummary:
    """A compaction's result: the summary of logical messages [0, covers)."""

    covers: int
    content: str
    tokens: int


@dataclass(frozen=True)
class SummaryRecord(Row):
    run_id: str
    seq: int
    covers: int
    content: str
    tokens: int
    created_at: datetime


@dataclass(frozen=True)
class WaitSpec:
    """What a step asks for when it parks the run."""

    kind: str
    resume_step: str
    prompt: str = ""
    approver_group: str | None = None
    deadline: datetime | None = None
    # What happens at the deadline: "fail" the run, resume with default_outcome ("default"),
    # or hand an approval to escalate_to for escalate_after more seconds ("escalate").
    on_timeout: str = "fail"
    default_outcome: Any = None
    token_hash: str | None = None
    escalate_to: str | None = None
    escalate_after: float | None = None
    source: str | None = None
    event_name: str | None = None
    match_key: str | None = None
    resource: str | None = None


@dataclass(frozen=True)
class Transition:
    """One step's result, committed atomically by :meth:`Store.commit_step`."""

    status: str
    state: dict[str, Any]
    step: str | None = None
    messages: tuple[NewMessage, ...] = ()
    events: tuple[NewEvent, ...] = ()
    wait: WaitSpec | None = None
    result: Any = None
    error: str | None = None
    # Seconds before the next attempt may start (a retry); 0 = publish now.
    delay: float = 0.0
    # True when this transition retries the same step (attempt counter goes up).
    retry: bool = False
    # What the step remembered, and the summary its compaction wrote (stored as the
    # summary of the run's new checkpoint, which its state["__context__"] names).
    memories: tuple[NewMemory, ...] = ()
    summary: NewSummary | None = None
    # Added to the step's step_completed event (what its model calls spent).
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A run claimed by one worker for one step: the run as claimed, its latest state,
    its agent, and the wait it resumes from (if it was parked at that checkpoint)."""

    run: RunRecord
    checkpoint: Checkpoint
    agent: AgentRecord
    resumed: WaitRecord | None = None
    # Resource slots the run holds while this step runs (given back when it commits).
    holds: tuple[str, ...] = ()

    @property
    def idempotency_key(self) -> str:
        """Stable across every attempt of this step: pass it to side effects."""
        return f"{self.run.id}:{self.checkpoint.seq + 1}"


@dataclass(frozen=True)
class ResourceRecord(Row):
    name: str
    capacity: int
    in_use: int
    updated_at: datetime


@dataclass(frozen=True)
class SweepReport:
    republished: list[tuple[str, int]] = field(default_factory=list)
    lease_expired: list[str] = field(default_factory=list)
    deadlines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    resource_wakeups: list[str] = field(default_factory=list)
    # Rows the pass could not handle ("run <id>", "wait <id>", "resource <name>"): logged
    # with their id and left for the next pass, while every other row was handled.
    skipped: list[str] = field(default_factory=list)
