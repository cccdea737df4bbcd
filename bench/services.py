"""The servers benchmarks run against, and their set-up: one copy for every benchmark.

A fresh Postgres schema per measurement (its URL puts it first on the search_path,
and it is dropped with all it holds afterwards), a Redis database emptied before and
after, and where results go.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BASE = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
RESULTS = Path(__file__).resolve().parent / "results"


def pg_dsn() -> str:
    """PG_BASE as libpq (psycopg) takes it."""
    return PG_BASE.replace("postgresql+psycopg://", "postgresql://")


def schema_url(schema: str, base: str = PG_BASE) -> str:
    """A store URL whose connections use ``schema``."""
    return f"{base}?options=-csearch_path%3D{schema}"


@contextmanager
def pg_schema(prefix: str = "bench") -> Iterator[str]:
    """A new, empty Postgres schema (its name), dropped with all it holds afterwards."""
    import psycopg

    schema = f"{prefix.rstrip('_')}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def flush_redis(url: str = REDIS_URL) -> None:
    """Empty the benchmark's Redis database (leftover messages would be consumed)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@contextmanager
def redis_db(url: str = REDIS_URL) -> Iterator[str]:
    """The benchmark's Redis database, empty before and after."""
    flush_redis(url)
    try:
        yield url
    finally:
        flush_redis(url)
