"""Input that used to break the API or the store (issue 14, part 2): each is now refused
with a 4xx and a message, and changes nothing.

NUL bytes and lone surrogates (no text column of Postgres can hold the first, no UTF-8
the second), tokens, cookies and CSRF fields with non-ASCII text (``compare_digest``
raised on them), a signature timestamp of ``nan``, over-long tasks and event keys; and
what an attacker who reads the store or frames a page could use: world-readable store
files, SQL parameters in error logs, pages that may be framed.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from httpx import Response
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.jsonvalues import check_json, check_text
from pausepoint.persistence.records import FAILED
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import agents
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.tokens import sign, verify_signature
from pausepoint.tasks.workflow import End, Outcome, Registry, Workflow
from pausepoint.worker.web import COOKIE
from tests.unit.test_api_audit import ROOT, Env, auth
from tests.unit.test_api_audit import env as env
from tests.unit.test_runtime import runtime_for

NUL = "a\x00b"
SURROGATE = "a\ud800b"


def post(env: Env, path: str, body: object) -> Response:
    """POST ``body`` as JSON with every non-ASCII character escaped, as a client may send a
    lone surrogate (``"\\ud800"``) that no UTF-8 encoder would."""
    headers = {**auth(ROOT), "content-type": "application/json"}
    return env.http.post(path, content=json.dumps(body), headers=headers)


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_text_no_store_can_keep_is_refused_where_it_comes_in(env: Env, bad: str) -> None:
    start = {"workflow": "loan", "agent": "loan_processor"}
    cases = [
        {**start, "task": bad},
        {**start, "task": "t", "input": {"applicant": bad}},
        {**start, "task": "t", "input": {bad: 1}},
        {**start, "task": "t", "input": {"deep": [{"x": [bad]}]}},
    ]
    for body in cases:
        error = env.refused(lambda b=body: post(env, "/runs", b), 422)
        assert "NUL" in error or "surrogate" in error, error
    run_id = env.parked_loan()
    env.refused(lambda: post(env, f"/runs/{run_id}/approve", {"comment": bad}), 422)
    env.refused(lambda: post(env, "/events/order.paid", {"key": bad}), 422)


def test_checks_name_what_is_wrong() -> None:
    with pytest.raises(InvalidInput, match="the task holds a NUL character"):
        check_text(NUL, "the task")
    with pytest.raises(InvalidInput, match="holds a lone surrogate"):
        check_json({"a": [SURROGATE]}, "run input")
    with pytest.raises(InvalidInput, match="has a key that holds a NUL"):
        check_json({NUL: 1}, "run input")
    assert check_json({"emoji": "✓ 😀", "n": 1}, "x") == {"emoji": "✓ 😀", "n": 1}


def test_over_long_tasks_and_event_keys_are_422(env: Env) -> None:
    start = {"workflow": "loan", "agent": "loan_processor"}
    error = env.refused(lambda: env.post("/runs", {**start, "task": "x" * 100_001}), 422)
    assert "longer than 100,000 characters" in error
    error = env.refused(lambda: env.post("/events/order.paid", {"key": "k" * 201}), 422)
    assert "event key" in error


@pytest.mark.parametrize(
    "token",
    [
        "0" * 32 + ".١٢.-.a" + "0" * 63,  # Arabic-Indic digits: str.isdigit says yes
        "0" * 32 + ".1.-." + "é" * 64,  # a MAC of non-ASCII letters
    ],
)
def test_a_callback_token_of_non_ascii_text_is_unknown_not_a_crash(env: Env, token: str) -> None:
    r = env.http.post(f"/callbacks/{token}", json={"x": 1})
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "unknown callback token"


def test_non_ascii_sessions_and_csrf_fields_are_refused_not_a_crash(env: Env) -> None:
    cookie = "root." + str(int(time.time()) + 600) + "." + "é" * 64
    r = env.http.get("/ui", headers={"cookie": f"{COOKIE}={cookie}".encode()})
    assert r.status_code in (303, 307), r.text
    login = env.http.post("/ui/login", data={"key": ROOT})
    assert login.status_code == 303
    run_id = env.parked_loan()
    r = env.http.post(f"/ui/runs/{run_id}/decide", data={"csrf": "ü" * 64, "decision": "approve"})
    assert r.status_code == 303 and "flash=" in r.headers["location"]
    assert env.store.get_run(run_id).status == "waiting"


def test_a_signature_timestamp_of_nan_or_inf_is_refused() -> None:
    body = b'{"paid": true}'
    for stamp in ("nan", "NaN", "inf", "-inf"):
        problem = verify_signature(
            "s", stamp, sign("s", stamp, body, "t"), body, time.time(), token="t"
        )
        assert problem == "X-Pausepoint-Timestamp is not a Unix time"
    now = str(time.time())
    good = sign("s", now, body, "t")
    assert verify_signature("s", now, good, body, time.time(), token="t") is None
    bad = verify_signature("s", now, "sha256=é", body, time.time(), token="t")
    assert bad == "signature does not match"


def test_no_page_may_be_framed(env: Env) -> None:
    for path in ("/healthz", "/ui/login", "/runs"):
        r = env.http.get(path, headers=auth(ROOT))
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path


def test_a_new_sqlite_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = Store.from_url(f"sqlite:///{path}")
    try:
        store.save_agent("a", persona="p")
        for file in tmp_path.iterdir():
            mode = stat.S_IMODE(os.stat(file).st_mode)
            assert mode & 0o077 == 0, (file.name, oct(mode))
    finally:
        store.close()


def test_sql_errors_never_carry_the_rows_data(store: Store) -> None:
    store.save_agent("a", persona="the secret persona")
    with pytest.raises(IntegrityError) as caught:
        with store.write() as conn:
            conn.execute(
                insert(agents).values(
                    name="a",
                    persona="the secret persona",
                    instruction="",
                    strategy="",
                    model={},
                    created_at=store.clock(),
                    updated_at=store.clock(),
                )
            )
    assert "the secret persona" not in str(caught.value)
    assert "hidden" in str(caught.value)


def test_a_step_that_says_what_no_store_keeps_fails_its_run_saying_so(store: Store) -> None:
    registry = Registry()
    wf = Workflow("nul_step", registry=registry)

    @wf.step
    def say(ctx: StepContext) -> Outcome:
        ctx.say("assistant", "binary\x00junk from a tool")
        return End({"ok": True})

    store.save_agent("a", persona="p")
    rt, published = runtime_for(store, registry)
    run = rt.start("nul_step", agent="a", task="t")
    rt.run_step(*published.pop(0), owner="t")
    failed = store.get_run(run.id)
    assert failed.status == FAILED
    assert "message 0 of the step holds a NUL character" in (failed.error or "")
    assert store.history(run.id) == []


def test_two_api_keys_of_one_name_or_one_secret_are_refused() -> None:
    from pydantic import SecretStr, ValidationError

    from pausepoint.worker.settings import ApiKey, Settings

    viewer = ApiKey(name="ops", key=SecretStr("k-1"), roles=["viewer"])
    admin = ApiKey(name="ops", key=SecretStr("k-2"), roles=["admin"])
    with pytest.raises(ValidationError, match="given twice: ops"):
        Settings(api_keys=[viewer, admin])
    same = ApiKey(name="other", key=SecretStr("k-1"), roles=["admin"])
    with pytest.raises(ValidationError, match="same secret"):
        Settings(api_keys=[viewer, same])
    assert len(Settings(api_keys=[viewer]).api_keys) == 1


def test_a_failed_run_keeps_its_traceback_out_of_the_trail(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    wf = Workflow("crashes", registry=registry)

    @wf.step(max_retries=0)
    def boom(ctx: StepContext) -> Outcome:
        raise RuntimeError("the CRM said no")

    store.save_agent("a", persona="p")
    rt, published = runtime_for(store, registry)
    run = rt.start("crashes", agent="a", task="t")
    with caplog.at_level("ERROR"):
        rt.run_step(*published.pop(0), owner="t")
    (failed,) = [e for e in store.events(run.id) if e.kind == "failed"]
    assert failed.data["error"] == "RuntimeError: the CRM said no"
    assert set(failed.data) == {"step", "error", "digests"}
    assert "Traceback" in caplog.text and "test_hostile_input.py" in caplog.text


def test_a_page_shows_only_the_messages_the_server_wrote(env: Env) -> None:
    crafted = env.http.get("/ui/login", params={"error": "Call +1 555 0100 to unlock"})
    assert "555" not in crafted.text
    refused = env.http.post("/ui/login", data={"key": "wrong"})
    where = refused.headers["location"]
    assert where.startswith("/ui/login?error=") and "&sig=" in where
    shown = env.http.get(where)
    assert "unknown API key" in shown.text
    forged = where.replace("unknown", "expired")
    assert "expired API key" not in env.http.get(forged).text


def test_sessions_are_not_signed_by_the_store_secret_and_end_with_their_key(
    tmp_path: Path,
) -> None:
    from pydantic import SecretStr

    from pausepoint.worker.auth import Keyring, Unauthorized
    from pausepoint.worker.settings import ApiKey

    store = Store.from_url(f"sqlite:///{tmp_path / 's.db'}")
    try:
        # Whoever reads the store has its secret: a session they sign with it is refused.
        store_secret = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None).secret
        root = ApiKey(name="root", key=SecretStr("k-root"), roles=["admin"])
        api_ring = Keyring([root], bytes.fromhex("ab" * 32))
        forged = Keyring([root], store_secret).session_for(api_ring.authenticate("k-root"))
        with pytest.raises(Unauthorized):
            api_ring.from_session(forged)
        session = api_ring.session_for(api_ring.authenticate("k-root"))
        assert api_ring.from_session(session).name == "root"
        rotated = ApiKey(name="root", key=SecretStr("k-root-2"), roles=["admin"])
        with pytest.raises(Unauthorized, match="no longer configured"):
            Keyring([rotated], bytes.fromhex("ab" * 32)).from_session(session)
    finally:
        store.close()


def test_the_api_refuses_a_session_signed_with_the_store_secret(env: Env) -> None:
    from pausepoint.worker.auth import Keyring
    from tests.unit.test_api_audit import KEYS

    ring = Keyring(KEYS, env.rt.secret)
    forged = ring.session_for(ring.authenticate(ROOT))
    r = env.http.get("/ui", headers={"cookie": f"{COOKIE}={forged}"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"


def test_a_producer_cannot_choose_who_approves_its_loan(store: Store) -> None:
    from pausepoint.tasks import examples  # noqa: F401  (registers loan)
    from pausepoint.tasks.workflow import registry

    rt, published = runtime_for(store, registry)
    store.save_agent("loans", persona="p")
    store.save_agent("intern_loans", persona="p", model={"approver_group": "interns"})
    task = "Loan application: amount 20000, income 90000, debt 3000"
    chosen = rt.start("loan", agent="loans", task=task, input={"approver_group": "interns"})
    set_by_agent = rt.start("loan", agent="intern_loans", task=task)
    while published:
        rt.run_step(*published.pop(0), owner="t")
    assert store.waits(run_id=chosen.id)[0].approver_group == "underwriters"
    assert store.waits(run_id=set_by_agent.id)[0].approver_group == "interns"


def test_checkpoint_numbers_beyond_the_column_are_refused(env: Env, store: Store) -> None:
    run_id = env.completed_loan()
    big = 2**31
    env.refused(lambda: env.post(f"/runs/{run_id}/rollback", {"to_seq": big}), 422)
    env.refused(lambda: env.post(f"/runs/{run_id}/fork", {"at_seq": 2**63}), 422)
    r = env.get(f"/runs/{run_id}/checkpoints/{big}")
    assert r.status_code == 422, r.text
    # The store says so itself, on both backends (the CLI and Python go through it).
    store.save_agent("a", persona="p")
    from pausepoint.tasks.workflow import registry

    rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None, workflows=registry)
    run = rt.start("noop", agent="a", task="t")
    for call in (
        lambda: store.checkpoint(run.id, big),
        lambda: rt.rollback(run.id, big, actor="t"),
        lambda: rt.fork(run.id, -1, actor="t"),
    ):
        with pytest.raises(InvalidInput, match="whole number from 0 to 2147483647"):
            call()


def test_only_the_pages_own_form_logs_out(env: Env) -> None:
    assert env.http.post("/ui/login", data={"key": ROOT}).status_code == 303
    inbox = env.http.get("/ui").text
    csrf = inbox.split('action="/ui/logout"', 1)[1].split('name="csrf" value="', 1)[1]
    csrf = csrf.split('"', 1)[0]
    forged = env.http.post("/ui/logout", data={})  # another site's form: no token
    assert forged.status_code == 303 and forged.headers["location"].startswith("/ui?flash=")
    assert env.http.get("/ui").status_code == 200  # still logged in
    out = env.http.post("/ui/logout", data={"csrf": csrf})
    assert out.headers["location"] == "/ui/login"
    assert env.http.get("/ui").headers.get("location") == "/ui/login"
