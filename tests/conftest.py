from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pausepoint.persistence.store import Store
from tests import services


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with services.pg_schema_url() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    with services.redis_url() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on the SQLite store and on the real Postgres."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        with services.pg_schema_url() as url:
            yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.from_url(store_url)
    try:
        yield s
    finally:
        s.close()
