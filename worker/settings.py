"""The one settings object. Read once, by a process entry point; every default is here.

Each field is set from the environment as ``PAUSEPOINT_<NAME>`` (or a ``.env`` file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pausepoint.persistence.audit_keys import ENV_KEY, ENV_KEY_FILE, AuditKeys
from pausepoint.persistence.retention import Retention, RetentionPolicy
from pausepoint.persistence.urls import mask_url

ROLES = ("admin", "producer", "approver", "system", "viewer")
# Settings holding URLs: shown (repr, str, logs, Flower's Config tab) with credentials masked.
# Steps one worker runs at once by default: prefork processes, or threads.
POOLS = ("prefork", "threads")
PREFORK_CONCURRENCY = 2
THREADS_CONCURRENCY = 64
URL_FIELDS = frozenset({"store_url", "broker_url", "llm_base_url", "public_url"})


class ApiKey(BaseModel):
    """One API key: who it is, what it may do, and which approver groups it belongs to."""

    name: str
    key: SecretStr
    roles: list[Literal["admin", "producer", "approver", "system", "viewer"]]
    groups: list[str] = Field(default_factory=list)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAUSEPOINT_", env_file=".env", extra="ignore")

    store_url: str = Field(
        "sqlite:///pausepoint.db",
        description="Where runs live: sqlite:///path.db or postgresql://user@host/db.",
    )
    broker_url: str = Field(
        "sqla+sqlite:///pausepoint-broker.db",
        description="Celery broker: a SQLite file (embedded), redis://... or amqp://...",
    )
    workflows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["pausepoint.tasks.examples"],
        description="Modules to import for workflows, comma-separated.",
    )
    llm: Literal["scripted", "openai"] = Field(
        "scripted",
        description="LLM backend: deterministic 'scripted', or an 'openai'-compatible API.",
    )
    llm_base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. .../v1.")
    llm_api_key: SecretStr | None = Field(None, description="API key for the LLM backend.")
    llm_model: str = Field("gpt-4o-mini", description="Model name, unless the agent sets one.")
    llm_timeout: float = Field(60.0, gt=0, description="Seconds per LLM request.")
    llm_max_retries: int = Field(4, ge=0, description="Retries on 429/5xx/timeouts.")
    lease_seconds: float = Field(
        300.0, gt=0, description="How long a step may run before its run is taken back."
    )
    redeliver_after: float = Field(
        30.0, gt=0, description="Seconds a queued run may go without a message before re-send."
    )
    max_attempts: int = Field(5, ge=1, description="Worker losses before a step's run fails.")
    sweep_interval: float = Field(2.0, gt=0, description="Seconds between sweeper passes (beat).")
    pool: Literal["prefork", "threads"] = Field(
        "prefork",
        description="Celery pool of `pausepoint worker`: prefork (processes; steps that "
        "compute) or threads (steps that wait on a model or an API).",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Steps one `pausepoint worker` runs at once (default: 2 processes on "
        "prefork, 64 threads on threads).",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes of one `pausepoint worker` on the threads pool, "
        "the concurrency split between them: a threads pool runs under one interpreter "
        "lock, so one process uses one core (prefork already runs processes).",
    )
    store_pool_size: int | None = Field(
        None,
        ge=1,
        le=500,
        description="Store connections a worker process keeps open (default: 5 on prefork; "
        "on threads, a quarter of the concurrency, 4 to 32); as many again may open "
        "under a burst, and a step waits its turn for one instead of failing.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port a `pausepoint worker` serves Prometheus metrics on (unset: none).",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the worker's metrics endpoint listens on."
    )
    inline_steps: int = Field(
        20,
        ge=1,
        description="Steps of one run a worker may run in a row when each next step is due "
        "at once (1: every step goes through the broker).",
    )
    broker_poll_interval: float = Field(
        0.05, gt=0, description="Seconds between polls of a SQLite broker."
    )
    log_level: str = Field("INFO", description="Log level of worker and beat.")
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the HTTP API as external systems reach it (callback URLs).",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Hex key for callback tokens; by default a random one kept in the store.",
    )
    session_key: SecretStr | None = Field(
        None,
        description="Hex key that signs approval-page sessions and forms; never the store's "
        "secret (whoever reads the store could sign an admin's session). Unset: a random "
        "key per API process (sessions end when it restarts; give every API process the "
        "same key to share them).",
    )
    resources: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Named capacities, e.g. 'llm-quota=5,gpu=2'.",
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list: [{"name": "alice", "key": "...", "roles": ["approver"], '
        '"groups": ["underwriters"]}]. Roles: admin, producer, approver, system, viewer.',
    )
    callback_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON object of HMAC secrets per callback source: {"payments": "..."}.',
    )
    max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest request body the API accepts."
    )
    retention_keep_checkpoints: int | None = Field(
        None, ge=1, description="A finished run keeps its last N checkpoints (unset: all)."
    )
    retention_days: float | None = Field(
        None,
        ge=0,
        description="Finished runs older than this many days lose their state (unset: never).",
    )
    retention_events_days: float | None = Field(
        None,
        ge=0,
        description="Their audit trail stays this many days longer, then is archived as JSONL "
        "and deleted (unset: kept).",
    )
    retention_workflows: dict[str, dict[str, float | int | None]] = Field(
        default_factory=dict,
        description='Per-workflow overrides, JSON: {"loan": {"delete_after_days": 2555, '
        '"events_extra_days": 365, "keep_checkpoints": 20}}.',
    )
    archive_dir: str = Field(
        "pausepoint-archive", description="Where expired audit trails are written (JSONL)."
    )
    retention_memory_days: float | None = Field(
        None, ge=0, description="Delete agents' memories older than this many days (kept if unset)."
    )
    retention_superseded_memory_days: float | None = Field(
        None,
        ge=0,
        description="Delete superseded or rolled-back memories older than this many days.",
    )
    retention_interval: float = Field(
        86400.0, gt=0, description="Seconds between retention passes run by beat."
    )
    audit_key: SecretStr | None = Field(
        None,
        description="Key(s) of the audit trail, comma-separated: the first signs, all verify "
        "(rotation). Kept outside the store; unset: plain SHA-256, which proves nothing "
        "against whoever can write the store. `pausepoint audit keygen` makes one.",
    )
    audit_key_file: str | None = Field(
        None, description="A file with the audit key(s), one a line (the first signs)."
    )
    audit_anchors: str | None = Field(
        None,
        description="Anchor file beat appends the ledger's head to (default: "
        "<archive_dir>/anchors.jsonl); keep it where the database's writers cannot write.",
    )
    audit_anchor_interval: float = Field(
        3600.0, ge=0, description="Seconds between anchors written by beat (0: none)."
    )
    api_host: str = Field("127.0.0.1", description="Where `pausepoint api` listens.")
    api_port: int = Field(8000, description="Port of `pausepoint api`.")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() of these settings go to logs, tracebacks and Flower: secrets are
        # already SecretStr, and URLs lose their credentials here.
        for name, value in super().__repr_args__():
            if name in URL_FIELDS and isinstance(value, str):
                value = mask_url(value)
            yield name, value

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, value: object) -> object:
        if isinstance(value, str):
            out: dict[str, int] = {}
            for part in value.split(","):
                if not part.strip():
                    continue
                name, sep, slots = part.partition("=")
                if not sep or not slots.strip().isdigit():
                    raise ValueError(f"expected name=slots, got {part.strip()!r}")
                out[name.strip()] = int(slots)
            return out
        return value

    @field_validator("api_keys")
    @classmethod
    def _unique_keys(cls, value: list[ApiKey]) -> list[ApiKey]:
        # A session names its key: two keys of one name let the weaker log in as the other.
        names = [k.name for k in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"API key names must be unique; given twice: {', '.join(twice)}")
        secrets = [k.key.get_secret_value() for k in value]
        if len(set(secrets)) != len(secrets):
            raise ValueError("two API keys have the same secret: give each its own")
        return value

    def session_bytes(self) -> bytes | None:
        if self.session_key is None:
            return None
        try:
            value = bytes.fromhex(self.session_key.get_secret_value())
        except ValueError:
            raise ValueError(
                "PAUSEPOINT_SESSION_KEY must be hex (e.g. `openssl rand -hex 32`)"
            ) from None
        if len(value) < 16:
            raise ValueError("PAUSEPOINT_SESSION_KEY must be at least 16 bytes (32 hex digits)")
        return value

    def worker_concurrency(self) -> int:
        """Steps at once per worker: the setting, or the pool's default."""
        if self.concurrency is not None:
            return self.concurrency
        return THREADS_CONCURRENCY if self.pool == "threads" else PREFORK_CONCURRENCY

    def engine_options(self) -> dict[str, int]:
        """Connection pool of one process's store engine, sized for its pool of steps.

        A prefork child runs one step at a time (plus its lease heartbeat): the engine's
        defaults. On threads every slot may be between model calls at once, yet holds a
        connection only for its transactions (milliseconds), so a quarter of the slots
        is plenty; a slot that finds them all busy waits for one (``pool_timeout``).
        """
        if self.store_pool_size is None and self.pool != "threads":
            return {}
        size = self.store_pool_size or min(32, max(4, self.worker_concurrency() // 4))
        return {"pool_size": size, "max_overflow": size, "pool_timeout": 300}

    def secret_bytes(self) -> bytes | None:
        if self.secret_key is None:
            return None
        try:
            return bytes.fromhex(self.secret_key.get_secret_value())
        except ValueError:
            raise ValueError(
                "PAUSEPOINT_SECRET_KEY must be hex (e.g. `openssl rand -hex 32`)"
            ) from None

    def audit_keys(self) -> AuditKeys:
        """The audit keys these settings name (none: an unkeyed trail)."""
        env: dict[str, str] = {}
        if self.audit_key is not None:
            env[ENV_KEY] = self.audit_key.get_secret_value()
        if self.audit_key_file:
            env[ENV_KEY_FILE] = self.audit_key_file
        return AuditKeys.from_env(env)

    def anchors_path(self) -> Path:
        return Path(self.audit_anchors or Path(self.archive_dir) / "anchors.jsonl")

    @field_validator("workflows", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def retention(self) -> Retention:
        """The retention policy these settings describe."""
        return Retention.build(
            RetentionPolicy(
                keep_checkpoints=self.retention_keep_checkpoints,
                delete_after_days=self.retention_days,
                events_extra_days=self.retention_events_days,
            ),
            self.retention_workflows,
            self.archive_dir,
            memory_days=self.retention_memory_days,
            superseded_memory_days=self.retention_superseded_memory_days,
        )

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")
