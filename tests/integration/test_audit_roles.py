"""The README's Postgres role layout: the application role runs Pausepoint, and cannot
alter the trail (not even by dropping or disabling the triggers it does not own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from pausepoint.persistence.audit_keys import AuditKeys
from pausepoint.persistence.records import COMPLETED
from pausepoint.persistence.store import Store
from tests.chain import Driver

KEY = AuditKeys.of("role-layout-test-key-0123456789")


@pytest.fixture
def app_url(pg_url: str) -> Iterator[tuple[Store, str, str]]:
    """The schema migrated by the owner (this connection's user), and a URL that connects
    as a new application role granted what the README says."""
    owner = Store.from_url(pg_url, audit_keys=KEY)
    role = "pp_app_" + uuid.uuid4().hex[:10]
    with owner.engine.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        for statement in (
            f"CREATE ROLE {role} NOLOGIN",
            f"GRANT {role} TO CURRENT_USER",
            f"GRANT USAGE ON SCHEMA {schema} TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            f"REVOKE UPDATE, TRUNCATE ON events, ledger FROM {role}",
            f"GRANT UPDATE (n, link) ON ledger TO {role}",
        ):
            conn.execute(text(statement))
    try:
        yield owner, pg_url + f"%20-crole%3D{role}", role
    finally:
        with owner.engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        owner.close()


def test_the_application_role_runs_and_cannot_alter_the_trail(
    app_url: tuple[Store, str, str],
) -> None:
    _, url, role = app_url
    app = Store.from_url(url, migrate=False, audit_keys=KEY)
    try:
        with app.read() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == role
        app.save_agent("agent", persona="")
        d = Driver(app)
        run_id = d.start()
        d.approve(run_id)
        assert app.get_run(run_id).status == COMPLETED
        assert app.seal_all() > 0  # the seal is the one update it may make
        for statement in (
            "UPDATE events SET actor = 'mallory'",
            "DELETE FROM events",
            "TRUNCATE events CASCADE",
            "DELETE FROM ledger",
            "UPDATE ledger SET data = '{}'",
            "ALTER TABLE events DISABLE TRIGGER trail_append_only",
            "DROP TRIGGER trail_append_only ON events",
        ):
            with pytest.raises(DBAPIError, match=r"append-only|permission denied|must be owner"):
                with app.write() as conn:
                    conn.execute(text(statement))
        assert app.audit_store().ok
    finally:
        app.close()
