"""The HTTP API over real HTTP: `pausepoint api` and `pausepoint worker` processes.

Every test runs on the embedded default (SQLite store + SQLite broker) and on
Postgres + Redis, through the ``cluster`` fixture; requests go over the wire
with httpx, and whatever a refused request should leave alone is checked by
snapshotting every table of the store before and after it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from pausepoint.persistence.records import COMPLETED, FINISHED, QUEUED, WAITING
from pausepoint.persistence.store import utcnow
from pausepoint.persistence.tables import (
    checkpoints,
    deliveries,
    events,
    messages,
    resource_holders,
    resources,
    runs,
    waits,
)
from pausepoint.tasks.tokens import sign
from tests.integration.conftest import CALLBACK_SECRETS, Cluster

pytestmark = pytest.mark.integration

PRODUCER = "key-producer"
ALICE = "key-alice"  # approver, group underwriters
MALLORY = "key-mallory"  # approver, group interns
PARTNER = "key-partner"  # system
VIEWER = "key-viewer"
ROOT = "key-root"  # admin
MIB = 1_048_576
LOAN_TASK = "Loan: amount 10000, income 80000, debt 0"
TABLES = (runs, checkpoints, messages, events, waits, deliveries, resources, resource_holders)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(cluster_api: Any) -> httpx.Client:
    return httpx.Client(base_url=cluster_api.url, timeout=30)


def start(
    http: httpx.Client,
    workflow: str,
    input: dict[str, Any] | None = None,
    *,
    task: str = "",
    agent: str = "loan_processor",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    body = {"workflow": workflow, "agent": agent, "task": task, "input": input or {}}
    r = http.post("/runs", json=body, headers={**auth(PRODUCER), **(headers or {})})
    assert r.status_code == 201, r.text
    run: dict[str, Any] = r.json()
    return run


def detail(http: httpx.Client, run_id: str) -> dict[str, Any]:
    r = http.get(f"/runs/{run_id}", headers=auth(VIEWER))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def trail(http: httpx.Client, run_id: str) -> Counter[str]:
    r = http.get(f"/runs/{run_id}/events", headers=auth(VIEWER))
    assert r.status_code == 200, r.text
    return Counter(e["kind"] for e in r.json())


def callback_path(http: httpx.Client, run_id: str) -> str:
    """The run's callback URL (from its state) as a path on the API."""
    url = str(detail(http, run_id)["state"]["callback_url"])
    base = str(http.base_url).rstrip("/")
    assert url.startswith(base + "/callbacks/"), url
    return url[len(base) :]


def parked(cluster: Cluster, *ids: str) -> None:
    cluster.wait_for(list(ids), lambda r: r.status == WAITING, "the runs to park")


def finished(cluster: Cluster, *ids: str, timeout: float = 60.0) -> list[Any]:
    return cluster.wait_for(
        list(ids), lambda r: r.status in FINISHED, "the runs to finish", timeout=timeout
    )


def snapshot(cluster: Cluster) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table the API can change, in primary-key order."""
    out = {}
    with cluster.store.read() as conn:
        for table in TABLES:
            query = select(table).order_by(*table.primary_key.columns)
            out[table.name] = [dict(row) for row in conn.execute(query).mappings()]
    return out


def refused(
    cluster: Cluster,
    send: Callable[[], httpx.Response],
    status: int,
    *,
    says: str | None = None,
) -> httpx.Response:
    """``send()`` gets ``status`` with a JSON error, and the store is left exactly as it was."""
    before = snapshot(cluster)
    r = send()
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert isinstance(error, str) and error
    if says is not None:
        assert says in error, error
    assert snapshot(cluster) == before, f"a refused request ({status}: {error}) changed the store"
    return r


def big_body(size: int) -> bytes:
    """A valid JSON object of ``size`` bytes."""
    head, tail = b'{"pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


# --------------------------------------------------------------------------- tests


def test_a_callback_resumes_a_parked_run_once(cluster: Cluster) -> None:
    api = cluster.api()
    cluster.worker("w1")
    with client(api) as http:
        run = start(http, "payment")
        parked(cluster, run["id"])
        path = callback_path(http, run["id"])
        payload = {"paid": True, "amount": 125.5, "ref": "tx-1", "items": [1, 2]}

        r = http.post(path, json=payload)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "resumed", "run": run["id"]}

        (done,) = finished(cluster, run["id"])
        assert done.status == COMPLETED
        assert done.result == {"callback": payload}
        assert detail(http, run["id"])["run"]["result"] == {"callback": payload}

        again = http.post(path, json={"paid": False})
        assert again.status_code == 409, again.text
        assert "already received" in again.json()["error"]
        assert cluster.store.get_run(run["id"]).result == {"callback": payload}
        assert trail(http, run["id"])["callback_received"] == 1


def test_a_callback_that_comes_before_the_run_parks_is_delivered_when_it_does(
    cluster: Cluster,
) -> None:
    api = cluster.api()
    cluster.worker("w1")
    with client(api) as http:
        run = start(http, "payment", {"answer_at_once": True})
        (done,) = finished(cluster, run["id"])
        assert done.status == COMPLETED, done.error
        assert done.result == {"callback": {"paid": True, "early": True}}
        state = detail(http, run["id"])["state"]
        assert state["early_status"] == 202
        counts = trail(http, run["id"])
        assert counts["callback_received"] == 1
        # The early payload was consumed at park time: a replay now is a second use.
        again = http.post(callback_path(http, run["id"]), json={"paid": True})
        assert again.status_code == 409, again.text
        assert trail(http, run["id"])["callback_received"] == 1


def test_fifty_concurrent_approvals_decide_once(cluster: Cluster) -> None:
    api = cluster.api()
    cluster.worker("w1")
    with client(api) as http:
        run = start(http, "loan", task=LOAN_TASK)
    parked(cluster, run["id"])

    n = 50
    barrier = threading.Barrier(n)
    statuses: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def approve() -> None:
        try:
            with httpx.Client(base_url=api.url, timeout=60) as c:
                barrier.wait(timeout=30)
                r = c.post(
                    f"/runs/{run['id']}/approve", json={"comment": "ok"}, headers=auth(ALICE)
                )
            with lock:
                statuses.append(r.status_code)
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=approve) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert Counter(statuses) == {200: 1, 409: n - 1}, Counter(statuses)

    (done,) = finished(cluster, run["id"])
    assert done.status == COMPLETED
    assert done.result["outcome"] == "approved" and done.result["by"] == "api:alice"
    kinds = Counter(e.kind for e in cluster.store.events(run["id"]))
    assert kinds["decided"] == 1 and kinds["resumed"] == 1


def test_only_approvers_of_the_waits_group_may_decide(cluster: Cluster) -> None:
    api = cluster.api()
    cluster.worker("w1")
    with client(api) as http:
        run = start(http, "loan", task=LOAN_TASK)
        parked(cluster, run["id"])
        path = f"/runs/{run['id']}/approve"

        def post(headers: dict[str, str]) -> Callable[[], httpx.Response]:
            return lambda: http.post(path, json={"comment": "let me"}, headers=headers)

        refused(cluster, post(auth(MALLORY)), 403, says="underwriters")
        refused(cluster, lambda: http.post(f"/runs/{run['id']}/reject", headers=auth(MALLORY)), 403)
        refused(cluster, post(auth(VIEWER)), 403, says="not an approver")
        refused(cluster, post(auth(PRODUCER)), 403)
        refused(cluster, post({}), 401)
        refused(cluster, post(auth("key-nobody")), 401, says="unknown API key")
        refused(cluster, post({"X-API-Key": "wrong"}), 401)
        assert cluster.store.get_run(run["id"]).status == WAITING

        r = http.post(path, json={"comment": "fine"}, headers={"X-API-Key": ALICE})
        assert r.status_code == 200, r.text
        (done,) = finished(cluster, run["id"])
        assert done.status == COMPLETED and done.result["outcome"] == "approved"
        assert done.result["by"] == "api:alice"
        kinds = trail(http, run["id"])
        assert kinds["decided"] == 1


def test_every_refused_request_gets_its_status_and_changes_nothing(cluster: Cluster) -> None:
    api = cluster.api()
    w1 = cluster.worker("w1")
    with client(api) as http:
        paid = start(http, "payment")
        late = start(http, "payment")
        signed = start(http, "payment", {"source": "signed"})
        loan = start(http, "loan", task=LOAN_TASK)
        parked(cluster, paid["id"], late["id"], signed["id"], loan["id"])
        paid_path = callback_path(http, paid["id"])
        late_path = callback_path(http, late["id"])
        signed_path = callback_path(http, signed["id"])
        # From here on nothing runs in the background: no step, no sweeper.
        w1.stop()

        # ---- callbacks: malformed JSON and oversized bodies leave the wait pending.
        def raw(path: str, body: Any, **headers: str) -> Callable[[], httpx.Response]:
            h = {"Content-Type": "application/json", **headers}
            return lambda: http.post(path, content=body, headers=h)

        refused(cluster, raw(paid_path, b'{"paid": tru'), 422, says="not valid JSON")
        refused(cluster, raw(paid_path, b"\xff\xfe{}"), 422)
        over = big_body(MIB + 1)
        refused(cluster, raw(paid_path, over), 413)
        r = refused(cluster, raw(paid_path, chunks(over)), 413)
        assert "content-length" not in r.request.headers
        assert r.request.headers["transfer-encoding"] == "chunked"

        # ---- unknown tokens: a well-formed one with a wrong MAC, and garbage.
        forged = paid_path[:-64] + "0" * 64
        refused(cluster, lambda: http.post(forged, json={}), 404, says="unknown callback token")
        refused(cluster, lambda: http.post("/callbacks/not-a-token", json={}), 404)
        other_run = "f" * 32
        forged_run = paid_path.replace(paid["id"], other_run)
        refused(cluster, lambda: http.post(forged_run, json={}), 404)

        # ---- the first good callback is taken; a second use is 409.
        good = http.post(paid_path, json={"paid": True})
        assert good.status_code == 200, good.text
        refused(cluster, lambda: http.post(paid_path, json={"paid": True}), 409)

        # ---- a callback wait past its deadline: 410 (no sweeper ran to close it).
        with cluster.store.write() as conn:
            moved = conn.execute(
                update(waits)
                .where(waits.c.run_id == late["id"], waits.c.status == "pending")
                .values(deadline=utcnow() - timedelta(minutes=1))
            )
            assert moved.rowcount == 1
        refused(cluster, lambda: http.post(late_path, json={"paid": True}), 410, says="expired")

        # ---- a source with a secret: the signature must check out.
        secret = CALLBACK_SECRETS["signed"]
        body = json.dumps({"paid": True, "by": "signed"}).encode()
        now = str(int(time.time()))
        signed_token = signed_path.rsplit("/", 1)[1]
        refused(cluster, raw(signed_path, body), 401, says="bad signature")
        refused(
            cluster,
            raw(
                signed_path,
                body,
                **{"X-Pausepoint-Timestamp": now, "X-Pausepoint-Signature": "sha256=" + "0" * 64},
            ),
            401,
            says="does not match",
        )
        refused(
            cluster,
            raw(
                signed_path,
                body,
                **{
                    "X-Pausepoint-Timestamp": now,
                    "X-Pausepoint-Signature": sign("another-secret", now, body, signed_token),
                },
            ),
            401,
        )
        stale = str(int(time.time()) - 301)
        refused(
            cluster,
            raw(
                signed_path,
                body,
                **{
                    "X-Pausepoint-Timestamp": stale,
                    "X-Pausepoint-Signature": sign(secret, stale, body, signed_token),
                },
            ),
            401,
            says="away from now",
        )
        # Signed for another body: the signature covers the body.
        refused(
            cluster,
            raw(
                signed_path,
                body,
                **{
                    "X-Pausepoint-Timestamp": now,
                    "X-Pausepoint-Signature": sign(secret, now, b'{"paid": false}', signed_token),
                },
            ),
            401,
        )
        ok = http.post(
            signed_path,
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Pausepoint-Timestamp": now,
                "X-Pausepoint-Signature": sign(secret, now, body, signed_token),
            },
        )
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"status": "resumed", "run": signed["id"]}
        assert cluster.store.get_run(signed["id"]).status == QUEUED

        # ---- POST /runs: malformed JSON, unknown workflow or agent.
        def post_runs(body: Any, **headers: str) -> Callable[[], httpx.Response]:
            h = {"Content-Type": "application/json", **auth(PRODUCER), **headers}
            return lambda: http.post("/runs", content=body, headers=h)

        refused(cluster, post_runs(b'{"workflow": "payment", '), 422, says="not valid JSON")
        refused(cluster, post_runs(b'{"workflow": "payment"}'), 422, says="agent")
        refused(cluster, post_runs(b'{"workflow": "payment", "agent": "x", "input": []}'), 422)
        refused(
            cluster,
            post_runs(json.dumps({"workflow": "no_such_flow", "agent": "loan_processor"})),
            404,
            says="no_such_flow",
        )
        refused(
            cluster,
            post_runs(json.dumps({"workflow": "payment", "agent": "no_such_agent"})),
            404,
            says="no_such_agent",
        )
        refused(cluster, post_runs(big_body(MIB + 1)), 413)
        refused(cluster, lambda: http.post("/runs", json={"workflow": "payment"}), 401)

        # ---- approvals of a run that waits for something else, or is not waiting at all.
        refused(
            cluster,
            lambda: http.post(f"/runs/{late['id']}/approve", headers=auth(ROOT)),
            409,
            says="not waiting for an approval",
        )
        refused(
            cluster,
            lambda: http.post(f"/runs/{paid['id']}/approve", headers=auth(ALICE)),
            409,
            says="queued",
        )
        unknown = "0" * 32
        refused(cluster, lambda: http.post(f"/runs/{unknown}/approve", headers=auth(ALICE)), 404)
        refused(cluster, lambda: http.get(f"/runs/{unknown}", headers=auth(VIEWER)), 404)
        refused(cluster, lambda: http.get(f"/runs/{unknown}/events", headers=auth(VIEWER)), 404)
        # The loan still waits for its approver, untouched by all of the above.
        assert cluster.store.get_run(loan["id"]).status == WAITING


def test_post_runs_refuses_an_oversized_chunked_body(cluster: Cluster) -> None:
    api = cluster.api()
    body = json.dumps(
        {"workflow": "payment", "agent": "loan_processor", "task": "x" * (MIB + 10)}
    ).encode()
    with client(api) as http:
        before = snapshot(cluster)
        r = http.post(
            "/runs",
            content=chunks(body),
            headers={"Content-Type": "application/json", **auth(PRODUCER)},
        )
        assert "content-length" not in r.request.headers
        assert r.status_code == 413, (r.status_code, r.text[:200])
        assert snapshot(cluster) == before


def test_an_event_resumes_every_run_waiting_for_its_key(cluster: Cluster) -> None:
    api = cluster.api()
    cluster.worker("w1")
    with client(api) as http:
        a1 = [start(http, "order", {"order_id": "A1"})["id"] for _ in range(2)]
        (b2,) = [start(http, "order", {"order_id": "B2"})["id"]]
        parked(cluster, *a1, b2)

        r = http.post("/events/order.paid", json={"key": "A1", "amount": 5}, headers=auth(PARTNER))
        assert r.status_code == 200, r.text
        assert sorted(r.json()["resumed"]) == sorted(a1)

        for run in finished(cluster, *a1):
            assert run.status == COMPLETED
            assert run.result["shipped"] == "A1"
            assert run.result["event"] == {"key": "A1", "amount": 5}
        assert cluster.store.get_run(b2).status == WAITING
        for run_id in a1:
            assert trail(http, run_id)["event_received"] == 1

        send = http.post
        refused(
            cluster,
            lambda: send("/events/order.paid", json={"amount": 5}, headers=auth(PARTNER)),
            422,
            says='"key"',
        )
        refused(
            cluster,
            lambda: send("/events/order.paid", json={"key": 7}, headers=auth(PARTNER)),
            422,
        )
        refused(
            cluster,
            lambda: send("/events/order.paid", json={"key": "B2"}, headers=auth(PRODUCER)),
            403,
        )
        refused(cluster, lambda: send("/events/order.paid", json={"key": "B2"}), 401)
        over = chunks(big_body(MIB + 1))
        refused(
            cluster,
            lambda: send("/events/order.paid", content=over, headers=auth(PARTNER)),
            413,
        )
        assert cluster.store.get_run(b2).status == WAITING


def test_an_idempotency_key_returns_the_same_run(cluster: Cluster) -> None:
    api = cluster.api()
    body = {"workflow": "payment", "agent": "loan_processor", "input": {"n": 1}}
    key = {"Idempotency-Key": "order-42-payment"}
    with client(api) as http:
        first = http.post("/runs", json=body, headers={**auth(PRODUCER), **key})
        assert first.status_code == 201, first.text
        second = http.post("/runs", json=body, headers={**auth(PRODUCER), **key})
        assert second.status_code == 200, second.text
        assert second.json()["id"] == first.json()["id"]
        with cluster.store.read() as conn:
            ids = conn.execute(
                select(runs.c.id).where(runs.c.idempotency_key == key["Idempotency-Key"])
            ).scalars()
            assert list(ids) == [first.json()["id"]]
        assert len(cluster.store.list_runs(workflow="payment")) == 1

        changed = {**body, "input": {"n": 2}}
        refused(
            cluster,
            lambda: http.post("/runs", json=changed, headers={**auth(PRODUCER), **key}),
            409,
            says="different request",
        )
        assert len(cluster.store.list_runs(workflow="payment")) == 1


def test_a_resource_of_two_slots_runs_two_at_a_time_and_parks_the_rest(cluster: Cluster) -> None:
    api = cluster.api()
    with client(api) as http:
        ids = [start(http, "gpu", {"sleep": 1.0})["id"] for _ in range(6)]
    most_waiting = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most_waiting
        while not stop.is_set():
            listed = cluster.store.list_runs(workflow="gpu")
            most_waiting = max(most_waiting, sum(r.status == WAITING for r in listed))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        cluster.worker("w1")
        done = finished(cluster, *ids, timeout=90)
    finally:
        stop.set()
        sampler.join(10)
    assert all(r.status == COMPLETED for r in done), [(r.status, r.error) for r in done]
    spans = sorted((r.result["start"], r.result["end"]) for r in done)
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = overlap = 0
    for _, delta in points:  # at equal times an end (-1) sorts before a start (+1)
        running += delta
        overlap = max(overlap, running)
    assert overlap <= 2, spans
    assert overlap == 2, f"two slots should be used at once: {spans}"
    assert most_waiting >= 3, f"at most {most_waiting} runs parked at once"
    assert cluster.store.get_resource("gpu").in_use == 0
    with cluster.store.read() as conn:
        assert conn.execute(select(resource_holders)).first() is None


def test_health_and_openapi(cluster: Cluster) -> None:
    api = cluster.api()
    with client(api) as http:
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        spec = http.get("/openapi.json")
        assert spec.status_code == 200
        paths = spec.json()["paths"]
        for path in ("/runs", "/runs/{run_id}", "/callbacks/{token}", "/events/{name}"):
            assert path in paths, sorted(paths)
        assert "post" in paths["/runs"] and "post" in paths["/callbacks/{token}"]
