"""The one settings object. Read once, by a process entry point; every default is here.

Each field is set from the environment as ``PAUSEPOINT_<NAME>`` (or a ``.env`` file).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
        default_factory=lambda: ["tasks.examples"],
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
    concurrency: int = Field(2, ge=1, description="Worker processes per `pausepoint worker`.")
    broker_poll_interval: float = Field(
        0.05, gt=0, description="Seconds between polls of a SQLite broker."
    )
    log_level: str = Field("INFO", description="Log level of worker and beat.")

    @field_validator("workflows", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")
