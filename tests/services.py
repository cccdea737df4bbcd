"""Real servers for tests: Postgres and Redis on loopback, skipped or failed when missing.

A missing server skips the tests that need it, with the reason; with
``PAUSEPOINT_REQUIRE_SERVICES=1`` (CI) it fails them instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_BASE = os.environ.get("PAUSEPOINT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("PAUSEPOINT_TEST_REDIS", "redis://127.0.0.1:6379/15")


def required() -> bool:
    return os.environ.get("PAUSEPOINT_REQUIRE_SERVICES", "") not in ("", "0", "false")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(name: str, host: str, port: int) -> None:
    if _port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if required():
        pytest.fail(message + " and PAUSEPOINT_REQUIRE_SERVICES is set")
    pytest.skip(message)


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A store URL on the real Postgres whose schema is new and dropped afterwards."""
    need("Postgres", "127.0.0.1", 5432)
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    dsn = PG_BASE.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def redis_url() -> Iterator[str]:
    """The real Redis, on a database emptied before and after."""
    need("Redis", "127.0.0.1", 6379)
    import redis

    client = redis.Redis.from_url(REDIS_BASE)
    client.flushdb()
    try:
        yield REDIS_BASE
    finally:
        client.flushdb()
        client.close()
