"""The HTTP API's audit and operator endpoints, in process: export, verify, checkpoints,
rollback, fork and legal hold.

The app is the real one from ``create_api``, called over httpx's ASGI transport (on an
event loop in a helper thread, so the tests stay synchronous); its runtime is a SQLite
store whose ``publish`` appends to a list, and ``drain`` plays the worker
(``run_step``), as in test_runtime.py. Whatever a refused request should leave alone is checked by
snapshotting every table of the store before and after it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from celery import Celery
from fastapi import FastAPI
from httpx import Response
from pydantic import SecretStr
from sqlalchemy import select, text

from pausepoint.persistence.audit import (
    EXPORT_FIELDS,
    ExportedEvent,
    canonical,
    event_hash,
    event_record,
    verify_chain,
)
from pausepoint.persistence.records import COMPLETED, QUEUED, RUNNING, WAITING
from pausepoint.persistence.retention import Retention, RetentionPolicy, collect
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import metadata
from pausepoint.tasks import examples  # noqa: F401  (registers loan)
from pausepoint.tasks.jobs import FACTORY_KEY, forget_runtimes
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.api import create_api
from pausepoint.worker.serialize import plain
from pausepoint.worker.settings import ApiKey, Settings
from tests.tamper import drop_guards

ROOT = "key-root"  # admin
ALICE = "key-alice"  # approver, group underwriters
PRODUCER = "key-producer"
PARTNER = "key-partner"  # system
VIEWER = "key-viewer"
KEYS = [
    ApiKey(name="root", key=SecretStr(ROOT), roles=["admin"]),
    ApiKey(name="alice", key=SecretStr(ALICE), roles=["approver"], groups=["underwriters"]),
    ApiKey(name="producer", key=SecretStr(PRODUCER), roles=["producer"]),
    ApiKey(name="partner", key=SecretStr(PARTNER), roles=["system"]),
    ApiKey(name="viewer", key=SecretStr(VIEWER), roles=["viewer"]),
]
LOAN_TASK = "Loan application: amount 20000, income 90000, debt 3000"
UNKNOWN = "0" * 32


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Http:
    """A synchronous client of an ASGI app, in process.

    (Starlette's TestClient now wants the ``httpx2`` package; this needs only httpx.)
    """

    def __init__(self, portal: BlockingPortal, app: FastAPI) -> None:
        self._portal = portal
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        return self._portal.call(partial(self._client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._portal.call(self._client.aclose)


@dataclass
class Env:
    http: Http
    rt: Runtime
    published: list[tuple[str, int]]

    @property
    def store(self) -> Store:
        return self.rt.store

    def drain(self) -> int:
        """Run every published message, like a worker would; returns how many ran."""
        n = 0
        while self.published and n < 50:
            run_id, version = self.published.pop(0)
            self.rt.run_step(run_id, version, owner="w")
            n += 1
        return n

    def parked_loan(self) -> str:
        """A loan run assessed and waiting for an underwriter (checkpoint 1)."""
        run = self.rt.start("loan", agent="loan_processor", task=LOAN_TASK, actor="test")
        self.drain()
        assert self.store.get_run(run.id).status == WAITING
        return run.id

    def completed_loan(self) -> str:
        """A loan run approved by alice and finished: checkpoints 0 (assess), 1 (parked
        for the approval), 2 (the end)."""
        run_id = self.parked_loan()
        self.rt.decide(run_id, approved=True, actor="api:alice", comment="fine")
        self.drain()
        run = self.store.get_run(run_id)
        assert run.status == COMPLETED and run.seq == 2
        return run_id

    def get(self, path: str, key: str = VIEWER, **kwargs: Any) -> Response:
        return self.http.get(path, headers=auth(key), **kwargs)

    def post(self, path: str, body: Any = None, key: str = ROOT) -> Response:
        return self.http.post(path, json=body, headers=auth(key))

    def ok(self, response: Response, status: int = 200) -> Any:
        assert response.status_code == status, (response.status_code, response.text)
        return response.json()

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, in primary-key order."""
        out = {}
        with self.store.read() as conn:
            for table in metadata.sorted_tables:
                query = select(table).order_by(*table.primary_key.columns)
                out[table.name] = [dict(row) for row in conn.execute(query).mappings()]
        return out

    def refused(self, send: Callable[[], Response], status: int, *, says: str | None = None) -> str:
        """``send()`` gets ``status`` with a JSON error; the store and the broker are left
        exactly as they were."""
        before, sent = self.snapshot(), list(self.published)
        r = send()
        assert r.status_code == status, (r.status_code, r.text)
        error = r.json()["error"]
        assert isinstance(error, str) and error
        if says is not None:
            assert says in error, error
        assert self.snapshot() == before, f"a refused request ({status}: {error}) changed the store"
        assert self.published == sent, "a refused request published a message"
        return error


@pytest.fixture
def env(sqlite_url: str) -> Iterator[Env]:
    with open_env(sqlite_url) as e:
        yield e


@contextmanager
def open_env(sqlite_url: str) -> Iterator[Env]:
    """The app on a new SQLite store, its runtime and what it published (other test
    modules' fixtures use it too)."""
    store = Store.from_url(sqlite_url)
    store.save_agent("loan_processor", persona="I am a loan processing assistant.")
    published: list[tuple[str, int]] = []
    rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: published.append((r, v)))
    # create_api takes its runtime from the Celery app's factory: hand it this one.
    app = Celery("pausepoint-api-audit-test", set_as_current=False)
    app.conf[FACTORY_KEY] = lambda _app: rt
    api = create_api(Settings(store_url=sqlite_url, api_keys=KEYS), celery_app=app)
    assert api.state.runtime is rt
    try:
        with start_blocking_portal() as portal:
            http = Http(portal, api)
            try:
                yield Env(http, rt, published)
            finally:
                http.close()
    finally:
        forget_runtimes()  # closes the store
        app.close()


def kinds(env: Env, run_id: str) -> list[str]:
    return [e.kind for e in env.store.events(run_id)]


# ---------------------------------------------------------------- export


def test_events_json_stays_a_list_of_events(env: Env) -> None:
    run_id = env.completed_loan()
    body = env.ok(env.get(f"/runs/{run_id}/events"))
    assert body == [plain(e) for e in env.store.events(run_id)]
    assert env.ok(env.get(f"/runs/{run_id}/events", params={"format": "json"})) == body


def test_events_jsonl_export_is_the_stored_trail_and_its_chain(env: Env) -> None:
    run_id = env.completed_loan()
    r = env.get(f"/runs/{run_id}/events", params={"format": "jsonl"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert f'filename="run-{run_id}-events.jsonl"' in r.headers["content-disposition"]
    lines = r.text.splitlines()
    assert r.text.endswith("\n") and all(lines)
    records = [json.loads(line) for line in lines]
    stored = env.store.events(run_id)
    assert records == [event_record(e) for e in stored]
    assert [rec["n"] for rec in records] == list(range(1, len(stored) + 1))
    # Each line is canonical JSON, and every hash follows from the line before it.
    assert lines == [canonical(rec) for rec in records]
    prev = ""
    for rec in records:
        exported = ExportedEvent.from_record(rec)
        assert rec["prev_hash"] == prev
        assert rec["hash"] == event_hash(
            env.store.audit_keys,
            prev,
            exported.run_id,
            exported.n,
            exported.kind,
            exported.actor,
            exported.data,
            exported.created_at,
        )
        prev = rec["hash"]
    run = env.store.get_run(run_id)
    assert prev == run.event_hash
    exported_trail = [ExportedEvent.from_record(rec) for rec in records]
    assert verify_chain(run_id, exported_trail, run.event_count, run.event_hash) is None


def test_events_csv_export_has_a_header_and_a_row_per_event(env: Env) -> None:
    run_id = env.completed_loan()
    r = env.get(f"/runs/{run_id}/events", params={"format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment") and f'filename="run-{run_id}-events.csv"' in (
        disposition
    )
    rows = list(csv.reader(io.StringIO(r.text)))
    assert tuple(rows[0]) == EXPORT_FIELDS
    stored = env.store.events(run_id)
    assert len(rows) == 1 + len(stored)
    for row, e in zip(rows[1:], stored, strict=True):
        record = dict(zip(EXPORT_FIELDS, row, strict=True))
        expected = event_record(e)
        assert json.loads(record.pop("data")) == expected.pop("data")
        assert record == {k: str(v) for k, v in expected.items()}
    # The hashes chain row to row (the multi-line assessment in `data` survives quoting).
    hashes = [dict(zip(EXPORT_FIELDS, row, strict=True)) for row in rows[1:]]
    assert [h["prev_hash"] for h in hashes] == ["", *(h["hash"] for h in hashes[:-1])]


def test_events_unknown_format_is_422(env: Env) -> None:
    run_id = env.completed_loan()
    error = env.refused(
        lambda: env.get(f"/runs/{run_id}/events", params={"format": "xml"}),
        422,
        says="unknown format 'xml'",
    )
    assert "json, jsonl, csv" in error


# ---------------------------------------------------------------- audit


def test_audit_is_ok_on_an_untouched_run_and_names_an_edited_event(env: Env) -> None:
    run_id = env.completed_loan()
    count = len(env.store.events(run_id))
    clean = env.ok(env.get(f"/runs/{run_id}/audit"))
    assert {k: clean[k] for k in ("run_id", "ok", "events", "first_bad", "findings")} == {
        "run_id": run_id,
        "ok": True,
        "events": count,
        "first_bad": None,
        "findings": [],
    }
    assert clean["unkeyed"] == count and clean["keyed"] == 0 and clean["binds_state"] is True
    with env.store.write() as conn:
        drop_guards(conn)
        edited = conn.execute(
            text("UPDATE events SET data = :data WHERE run_id = :run AND n = 2"),
            {"data": json.dumps({"step": "assess", "next": "completed"}), "run": run_id},
        )
        assert edited.rowcount == 1
    body = env.ok(env.get(f"/runs/{run_id}/audit"))
    assert body["run_id"] == run_id and body["ok"] is False and body["events"] == count
    assert body["first_bad"]["n"] == 2
    assert "step_completed" in body["first_bad"]["problem"]
    assert "does not match its hash" in body["first_bad"]["problem"]
    # The export gives the trail as stored, so an auditor sees the same break.
    r = env.get(f"/runs/{run_id}/events", params={"format": "jsonl"})
    trail = [ExportedEvent.from_record(json.loads(line)) for line in r.text.splitlines()]
    run = env.store.get_run(run_id)
    finding = verify_chain(run_id, trail, run.event_count, run.event_hash)
    assert finding is not None and finding.n == 2


def test_audit_names_a_deleted_event(env: Env) -> None:
    run_id = env.completed_loan()
    with env.store.write() as conn:
        drop_guards(conn)
        conn.execute(text("DELETE FROM events WHERE run_id = :run AND n = 5"), {"run": run_id})
    body = env.ok(env.get(f"/runs/{run_id}/audit"))
    assert body["ok"] is False and body["events"] == env.store.get_run(run_id).event_count - 1
    assert body["first_bad"]["n"] == 5 and "deleted" in body["first_bad"]["problem"]


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_list_the_timeline(env: Env) -> None:
    run_id = env.completed_loan()
    timeline = env.ok(env.get(f"/runs/{run_id}/checkpoints"))
    assert [c["seq"] for c in timeline] == [c.seq for c in env.store.checkpoints(run_id)]
    assert [c["seq"] for c in timeline] == [0, 1, 2]
    assert [c["step"] for c in timeline] == ["assess", "finalize", None]
    assert [c["current"] for c in timeline] == [False, False, True]
    assert [c["messages"] for c in timeline] == [0, 2, 4]
    assert timeline[1]["changed"] == ["assessment", "recommendation"]
    assert "step_completed" in timeline[1]["events"] and "completed" in timeline[2]["events"]
    assert all(c["rolled_back_to"] is None for c in timeline)


def test_a_checkpoint_as_it_was_with_what_changed(env: Env) -> None:
    run_id = env.completed_loan()
    first = env.ok(env.get(f"/runs/{run_id}/checkpoints/0"))
    assert first["seq"] == 0 and first["step"] == "assess"
    assert first["state"] == {} and first["history"] == [] and first["changes"] is None

    parked = env.ok(env.get(f"/runs/{run_id}/checkpoints/1"))
    cp = env.store.checkpoint(run_id, 1)
    assert parked["run_id"] == run_id and parked["step"] == "finalize"
    assert parked["state"] == cp.state and parked["state"]["recommendation"] == "APPROVE"
    assert parked["history"] == [plain(m) for m in env.store.history(run_id, at=1)]
    assert [m["role"] for m in parked["history"]] == ["user", "assistant"]
    changes = parked["changes"]
    assert changes["from_seq"] == 0
    assert sorted(changes["state"]["added"]) == ["assessment", "recommendation"]
    assert changes["state"]["removed"] == [] and changes["state"]["changed"] == {}
    assert len(changes["messages_added"]) == 2 and changes["messages_dropped"] == 0

    end = env.ok(env.get(f"/runs/{run_id}/checkpoints/2"))
    assert end["changes"]["state"]["added"] == {"decision": "approved"}
    assert len(end["history"]) == 4 and len(end["changes"]["messages_added"]) == 2

    env.refused(lambda: env.get(f"/runs/{run_id}/checkpoints/9"), 404, says="no checkpoint 9")
    env.refused(lambda: env.get(f"/runs/{run_id}/checkpoints/-1"), 422, says="seq: Input")


# ---------------------------------------------------------------- rollback


def test_rollback_of_a_completed_run_to_its_approval_parks_it_again(env: Env) -> None:
    run_id = env.completed_loan()
    before = env.store.get_run(run_id)
    trail_before = env.store.events(run_id)
    body = env.ok(
        env.post(f"/runs/{run_id}/rollback", {"to_seq": 1, "reason": "the income was misread"})
    )
    run = env.store.get_run(run_id)
    assert body == plain(run)
    assert run.status == WAITING and run.step == "finalize" and run.seq == 3
    assert run.result is None and run.finished_at is None and run.version > before.version
    assert env.published == []  # parked: no message, no worker
    rolled = [e for e in env.store.events(run_id) if e.kind == "rolled_back"]
    assert len(rolled) == 1
    assert rolled[0].actor == "api:root"
    assert rolled[0].data["from_seq"] == 2 and rolled[0].data["to_seq"] == 1
    assert rolled[0].data["reason"] == "the income was misread"
    assert rolled[0].data["status_before"] == COMPLETED
    # Events are appended, never removed: the first decision is still in the trail.
    assert env.store.events(run_id)[: len(trail_before)] == trail_before
    assert kinds(env, run_id)[len(trail_before) :] == ["rolled_back", "paused"]
    # The state and conversation are those of checkpoint 1 again.
    assert env.store.checkpoint(run_id).state == env.store.checkpoint(run_id, 1).state
    assert len(env.store.history(run_id)) == 2
    timeline = env.ok(env.get(f"/runs/{run_id}/checkpoints"))
    assert timeline[-1]["seq"] == 3 and timeline[-1]["rolled_back_to"] == 1
    view = env.ok(env.get(f"/runs/{run_id}/checkpoints/3"))
    assert view["changes"]["messages_dropped"] == 2
    assert view["changes"]["state"]["removed"] == ["decision"]

    # An underwriter decides again, differently this time, through the API.
    waits = env.ok(env.get("/waits"))
    assert [w["run_id"] for w in waits] == [run_id]
    env.ok(env.post(f"/runs/{run_id}/reject", {"comment": "debt understated"}, key=ALICE))
    assert env.drain() == 1
    done = env.store.get_run(run_id)
    assert done.status == COMPLETED
    assert done.result["outcome"] == "rejected" and done.result["by"] == "api:alice"
    assert done.result["comment"] == "debt understated"
    detail = env.ok(env.get(f"/runs/{run_id}"))
    assert detail["run"]["result"]["outcome"] == "rejected"
    assert detail["state"]["decision"] == "rejected"
    assert [e["kind"] for e in detail["events"][len(trail_before) :]] == [
        "rolled_back",
        "paused",
        "decided",
        "resumed",
        "step_completed",
        "completed",
    ]
    decisions = [e["data"]["decision"] for e in detail["events"] if e["kind"] == "decided"]
    assert decisions == ["approved", "rejected"]
    assert env.ok(env.get(f"/runs/{run_id}/audit"))["ok"] is True


def test_rollback_to_the_start_queues_the_first_step_again(env: Env) -> None:
    run_id = env.completed_loan()
    body = env.ok(env.post(f"/runs/{run_id}/rollback", {"to_seq": 0}))
    assert body["status"] == QUEUED and body["step"] == "assess"
    assert env.published == [(run_id, body["version"])]
    env.drain()
    run = env.store.get_run(run_id)
    assert run.status == WAITING and run.step == "finalize"


def test_rollback_of_a_running_run_is_409_and_changes_nothing(env: Env) -> None:
    run = env.rt.start("loan", agent="loan_processor", task=LOAN_TASK, actor="test")
    env.published.clear()
    claim = env.store.claim(run.id, run.version, "w")
    assert claim is not None
    running = env.store.get_run(run.id)
    assert running.status == RUNNING
    env.refused(lambda: env.post(f"/runs/{run.id}/rollback", {"to_seq": 0}), 409, says="is running")
    env.refused(lambda: env.post(f"/runs/{run.id}/hold", {"on": True}), 409, says="is running")
    after = env.store.get_run(run.id)
    assert (after.version, after.status, after.seq) == (running.version, RUNNING, running.seq)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"to_seq": 9}, "from 0 to 1, not 9"),
        ({"to_seq": 2}, "from 0 to 1, not 2"),  # the checkpoint it is at
        ({"to_seq": -1}, "to_seq: Input should be greater than or equal to 0"),
        ({"to_seq": "1"}, "to_seq: Input should be a valid integer"),
        ({"to_seq": True}, "to_seq: Input should be a valid integer"),
        ({"to_seq": 1.5}, "to_seq: Input should be a valid integer"),
        ({}, "to_seq: Field required"),
        (None, "body: Field required"),
        ({"to_seq": 1, "reason": "x" * 2001}, "reason: String should have at most 2000"),
        # A misspelt field is refused, not ignored.
        ({"to_seq": 1, "seq": 0}, "seq: Extra inputs are not permitted"),
    ],
)
def test_rollback_to_a_bad_checkpoint_is_422_and_changes_nothing(
    env: Env, body: Any, says: str
) -> None:
    run_id = env.completed_loan()
    version = env.store.get_run(run_id).version
    env.refused(lambda: env.post(f"/runs/{run_id}/rollback", body), 422, says=says)
    assert env.store.get_run(run_id).version == version


def test_rollback_body_that_is_not_json_is_422(env: Env) -> None:
    run_id = env.completed_loan()
    env.refused(
        lambda: env.http.post(
            f"/runs/{run_id}/rollback",
            content=b"{to_seq: 1",
            headers={**auth(ROOT), "Content-Type": "application/json"},
        ),
        422,
        says="not valid JSON",
    )


# ---------------------------------------------------------------- who may


@pytest.mark.parametrize("key", [VIEWER, PRODUCER, ALICE, PARTNER])
@pytest.mark.parametrize(
    ("action", "body"),
    [("rollback", {"to_seq": 1}), ("fork", {"at_seq": 1}), ("hold", {"on": True})],
)
def test_operator_actions_need_an_admin_key(env: Env, key: str, action: str, body: Any) -> None:
    run_id = env.completed_loan()
    version = env.store.get_run(run_id).version
    env.refused(lambda: env.post(f"/runs/{run_id}/{action}", body, key=key), 403, says="admin")
    assert env.store.get_run(run_id).version == version


@pytest.mark.parametrize(
    ("action", "body"),
    [("rollback", {"to_seq": 1}), ("fork", {"at_seq": 1}), ("hold", {"on": True})],
)
def test_operator_actions_without_a_valid_key_are_401(env: Env, action: str, body: Any) -> None:
    run_id = env.completed_loan()
    path = f"/runs/{run_id}/{action}"
    env.refused(lambda: env.http.post(path, json=body), 401, says="send an API key")
    env.refused(lambda: env.post(path, body, key="key-nobody"), 401, says="unknown API key")


@pytest.mark.parametrize(
    "path", ["/events", "/events?format=jsonl", "/events?format=csv", "/audit", "/checkpoints"]
)
def test_reading_needs_a_key_and_any_key_will_do(env: Env, path: str) -> None:
    run_id = env.completed_loan()
    env.refused(lambda: env.http.get(f"/runs/{run_id}{path}"), 401)
    for key in (VIEWER, PRODUCER, ALICE, PARTNER, ROOT):
        assert env.get(f"/runs/{run_id}{path}", key=key).status_code == 200


# ---------------------------------------------------------------- fork


def test_fork_at_the_approval_makes_a_new_waiting_run(env: Env) -> None:
    parent_id = env.completed_loan()
    parent_before = env.store.get_run(parent_id)
    body = env.ok(env.post(f"/runs/{parent_id}/fork", {"at_seq": 1, "reason": "what if"}), 201)
    child = env.store.get_run(body["id"])
    assert body == plain(child)
    assert child.id != parent_id
    assert child.parent_run_id == parent_id and child.parent_seq == 1
    assert child.status == WAITING and child.step == "finalize"
    assert (child.agent_name, child.workflow, child.task) == ("loan_processor", "loan", LOAN_TASK)
    assert env.store.checkpoint(child.id).state == env.store.checkpoint(parent_id, 1).state
    assert [m.content for m in env.store.history(child.id)] == [
        m.content for m in env.store.history(parent_id, at=1)
    ]
    forked = [e for e in env.store.events(child.id) if e.kind == "forked"]
    assert len(forked) == 1 and forked[0].actor == "api:root"
    assert forked[0].data["from_run"] == parent_id and forked[0].data["from_seq"] == 1
    assert forked[0].data["reason"] == "what if"
    # The parent is not changed, and the forks are listed on it.
    assert env.store.get_run(parent_id) == parent_before
    assert [r.id for r in env.store.forks(parent_id)] == [child.id]
    # The child goes its own way.
    env.ok(env.post(f"/runs/{child.id}/reject", {"comment": "no"}, key=ALICE))
    env.drain()
    assert env.store.get_run(child.id).result["outcome"] == "rejected"
    assert env.store.get_run(parent_id).result["outcome"] == "approved"


def test_fork_without_a_body_takes_the_latest_checkpoint(env: Env) -> None:
    parent_id = env.parked_loan()
    body = env.ok(env.http.post(f"/runs/{parent_id}/fork", headers=auth(ROOT)), 201)
    assert body["parent_run_id"] == parent_id and body["parent_seq"] == 1
    assert body["status"] == WAITING


def test_fork_at_a_bad_checkpoint_is_422_and_changes_nothing(env: Env) -> None:
    run_id = env.completed_loan()
    # Its latest checkpoint is where it ended: nothing to continue from there.
    env.refused(lambda: env.post(f"/runs/{run_id}/fork", {"at_seq": 2}), 422, says="where it ended")
    env.refused(lambda: env.post(f"/runs/{run_id}/fork", {"at_seq": 7}), 422, says="0 to 2")
    env.refused(
        lambda: env.post(f"/runs/{run_id}/fork", {"at_seq": -1}),
        422,
        says="at_seq: Input should be",
    )


# ---------------------------------------------------------------- hold


def test_hold_is_recorded_and_lifted(env: Env) -> None:
    run_id = env.completed_loan()
    body = env.ok(env.post(f"/runs/{run_id}/hold", {"reason": "litigation 2026-17"}))
    assert body["legal_hold"] is True and env.store.get_run(run_id).legal_hold is True
    held = [e for e in env.store.events(run_id) if e.kind == "legal_hold"]
    assert len(held) == 1 and held[0].actor == "api:root"
    assert held[0].data == {"on": True, "reason": "litigation 2026-17", "by": "api:root"}
    # Asking again changes nothing.
    count = env.store.get_run(run_id).event_count
    assert env.ok(env.post(f"/runs/{run_id}/hold", {"on": True}))["legal_hold"] is True
    assert env.store.get_run(run_id).event_count == count
    # A held run keeps its state through retention.
    collect(env.store, Retention(RetentionPolicy(delete_after_days=0)), vacuum=False)
    assert env.store.get_run(run_id).purge_state is None

    body = env.ok(env.post(f"/runs/{run_id}/hold", {"on": False, "reason": "settled"}))
    assert body["legal_hold"] is False
    assert kinds(env, run_id)[-1] == "legal_hold"
    assert env.store.events(run_id)[-1].data["on"] is False
    # A misspelt field would otherwise put the hold back on: refused.
    env.refused(
        lambda: env.post(f"/runs/{run_id}/hold", {"of": False}), 422, says="of: Extra inputs"
    )
    env.refused(
        lambda: env.post(f"/runs/{run_id}/hold", {"on": "no"}), 422, says="on: Input should be"
    )


def test_a_hold_leaves_a_live_run_going(env: Env) -> None:
    parked = env.parked_loan()
    assert env.ok(env.post(f"/runs/{parked}/hold", {}))["status"] == WAITING
    env.ok(env.post(f"/runs/{parked}/approve", {"comment": "ok"}, key=ALICE))
    env.drain()
    assert env.store.get_run(parked).status == COMPLETED

    # A queued run's version moves on with the hold: its message goes stale, another is sent.
    queued = env.rt.start("loan", agent="loan_processor", task=LOAN_TASK, actor="test")
    body = env.ok(env.post(f"/runs/{queued.id}/hold", {}))
    assert body["status"] == QUEUED and body["version"] > queued.version
    assert env.published == [(queued.id, queued.version), (queued.id, body["version"])]
    env.drain()
    run = env.store.get_run(queued.id)
    assert run.status == WAITING and run.legal_hold is True


# ---------------------------------------------------------------- purged runs


def test_a_purged_run_shows_what_is_left(env: Env) -> None:
    run_id = env.completed_loan()
    report = collect(env.store, Retention(RetentionPolicy(delete_after_days=0)), vacuum=False)
    assert report.runs_purged == 1
    detail = env.ok(env.get(f"/runs/{run_id}"))
    assert detail["run"]["id"] == run_id and detail["run"]["status"] == COMPLETED
    assert detail["purged"] is not None
    assert detail["state"] == {} and detail["history"] == [] and detail["waits"] == []
    assert [e["kind"] for e in detail["events"]][-1] == "purged"
    # The trail stays, exportable and intact.
    assert len(env.ok(env.get(f"/runs/{run_id}/events"))) == len(detail["events"])
    r = env.get(f"/runs/{run_id}/events", params={"format": "jsonl"})
    assert len(r.text.splitlines()) == len(detail["events"])
    audit = env.ok(env.get(f"/runs/{run_id}/audit"))
    assert audit["ok"] is True and audit["events"] == len(detail["events"])
    # Its state is gone.
    env.refused(
        lambda: env.get(f"/runs/{run_id}/checkpoints"), 410, says="removed by the retention policy"
    )
    env.refused(
        lambda: env.get(f"/runs/{run_id}/checkpoints/1"),
        410,
        says="removed by the retention policy",
    )
    env.refused(lambda: env.post(f"/runs/{run_id}/rollback", {"to_seq": 1}), 410)
    env.refused(lambda: env.post(f"/runs/{run_id}/fork", {"at_seq": 1}), 410)


# ---------------------------------------------------------------- unknown runs


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "", None),
        ("GET", "/events", None),
        ("GET", "/events?format=jsonl", None),
        ("GET", "/events?format=csv", None),
        ("GET", "/audit", None),
        ("GET", "/checkpoints", None),
        ("GET", "/checkpoints/0", None),
        ("POST", "/rollback", {"to_seq": 0}),
        ("POST", "/fork", {"at_seq": 0}),
        ("POST", "/hold", {"on": True}),
    ],
)
def test_an_unknown_run_is_404(env: Env, method: str, path: str, body: Any) -> None:
    env.completed_loan()
    env.refused(
        lambda: env.http.request(method, f"/runs/{UNKNOWN}{path}", json=body, headers=auth(ROOT)),
        404,
        says=f"no run with id {UNKNOWN!r}",
    )
