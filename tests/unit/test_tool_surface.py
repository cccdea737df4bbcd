"""Tool calls where people meet them: the approval page shows the proposed call and
takes edited arguments, the run page and `pausepoint show` draw each call under the
turn that made it with its result, and the HTTP API's JSON and decisions carry them.

The page and the API are the real app from ``create_api``, called in process over
httpx's ASGI transport (as in test_api_audit.py); the CLI runs as subprocesses (as in
test_cli.py). The model is scripted and the runtime's publish is a list: ``drain`` plays
the worker, one step at a time.
"""

from __future__ import annotations

import html
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from anyio.from_thread import start_blocking_portal
from celery import Celery
from httpx import Response
from pydantic import SecretStr
from sqlalchemy import select

from pausepoint.persistence.records import COMPLETED, WAITING
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import metadata
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.jobs import FACTORY_KEY, forget_runtimes
from pausepoint.tasks.llm import Completion, Message, ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.scripted import tool_call
from pausepoint.tasks.strategies import add_react
from pausepoint.tasks.workflow import End, Outcome, Registry, Wait, Workflow
from pausepoint.worker.api import create_api
from pausepoint.worker.settings import ApiKey, Settings
from pausepoint.worker.web import timeline_html
from tests.unit.test_api_audit import Http, auth
from tests.unit.test_cli import Cli, assert_ok, assert_refused

ALICE = "key-alice"  # approver, group finance
VIEWER = "key-viewer"
KEYS = [
    ApiKey(name="alice", key=SecretStr(ALICE), roles=["approver"], groups=["finance"]),
    ApiKey(name="viewer", key=SecretStr(VIEWER), roles=["viewer"]),
]
REASON = "The customer says the parcel arrived broken."
PROPOSED = {"order_id": "A-1", "amount": 400}
EDITED = {"order_id": "A-1", "amount": 40}

_names = itertools.count()


def model(arguments: dict[str, Any]) -> ScriptedBackend:
    """A model that proposes one refund with ``arguments``, then answers with what the
    tool said (or that it was rejected)."""

    def reply(transcript: Sequence[Message]) -> str | Completion:
        results = [m for m in transcript if m.get("role") == "tool"]
        if results:
            return f"Finished: {results[-1].get('content')}"
        return Completion(REASON, tool_calls=(tool_call("refund", arguments, id="call_1"),))

    return ScriptedBackend([(".", reply)])


class Refunds:
    """A react workflow whose ``refund`` tool waits for group finance above $100, and a
    workflow with a plain approval (no tool call), on ``store``."""

    def __init__(self, store: Store, arguments: dict[str, Any] | None = None) -> None:
        self.store = store
        self.registry = Registry()
        n = next(_names)
        self.wf = Workflow(f"refunds_{n}", registry=self.registry)
        add_react(self.wf, start=True)
        self.ran: list[tuple[str, float]] = []

        def refund(order_id: str, amount: float) -> str:
            """Refund part of an order."""
            self.ran.append((order_id, amount))
            return f"refunded {amount:g} on {order_id}"

        self.wf.tool(refund, needs_approval=lambda a: a["amount"] > 100, group="finance")
        self.plain = Workflow(f"plain_{n}", registry=self.registry)

        @self.plain.step(start=True)
        def ask(ctx: StepContext) -> Outcome:
            return Wait.approval(then="done", prompt="Go on?", group="finance")

        @self.plain.step
        def done(ctx: StepContext) -> Outcome:
            return End({"ok": True})

        self.published: list[tuple[str, int]] = []
        self.rt = Runtime(
            store,
            llm=model(arguments or PROPOSED),
            publish=lambda r, v: self.published.append((r, v)),
            workflows=self.registry,
        )
        store.save_agent("helper", persona="You help.")

    def park(self, workflow: str | None = None) -> str:
        """A run waiting on its refund's approval (or, for ``plain``, a plain one)."""
        run = self.rt.start(workflow or self.wf.name, agent="helper", task="Refund A-1")
        self.drain()
        assert self.store.get_run(run.id).status == WAITING
        return run.id

    def drain(self) -> None:
        while self.published:
            self.rt.run_step(*self.published.pop(0), owner="test")

    def tool_call_record(self, run_id: str) -> dict[str, Any]:
        records: list[dict[str, Any]] = [
            e.data["tool_call"]
            for e in self.store.events(run_id)
            if "outcome" in e.data.get("tool_call", {})
        ]
        (record,) = records
        return record


def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with store.read() as conn:
        for table in metadata.sorted_tables:
            query = select(table).order_by(*table.primary_key.columns)
            out[table.name] = [dict(row) for row in conn.execute(query).mappings()]
    return out


# ------------------------------------------------------------ page and API


@dataclass
class Env:
    http: Http
    refunds: Refunds
    # Where the last refused decision sent the browser.
    where: str = ""

    @property
    def store(self) -> Store:
        return self.refunds.store

    def log_in(self, key: str = ALICE) -> str:
        """Log in on the page (the session cookie stays with the client); the inbox's
        CSRF token."""
        r = self.http.post("/ui/login", data={"key": key})
        assert r.status_code == 303 and r.headers["location"] == "/ui", r.text
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', self.inbox())
        assert found is not None
        return found.group(1)

    def inbox(self) -> str:
        r = self.http.get("/ui")
        assert r.status_code == 200, r.text
        return r.text

    def decide(self, run_id: str, **fields: str) -> Response:
        r = self.http.post(f"/ui/runs/{run_id}/decide", data=fields)
        assert r.status_code == 303, (r.status_code, r.text)
        return r

    def refused_on_page(self, run_id: str, says: str, **fields: str) -> str:
        """The page sends the decision back to the inbox with a message; nothing changed."""
        before, sent = snapshot(self.store), list(self.refunds.published)
        r = self.decide(run_id, **fields)
        where = r.headers["location"]
        assert where.startswith("/ui?flash="), where
        self.where = where  # the signed link to the message (the page shows only those)
        flash = parse_qs(urlsplit(where).query)["flash"][0]
        assert says in flash, flash
        assert snapshot(self.store) == before and self.refunds.published == sent
        assert self.store.get_run(run_id).status == WAITING
        return flash

    def refused_by_api(self, path: str, body: Any, status: int, says: str) -> None:
        before = snapshot(self.store)
        r = self.http.post(path, json=body, headers=auth(ALICE))
        assert r.status_code == status, (r.status_code, r.text)
        assert says in r.json()["error"], r.text
        assert snapshot(self.store) == before


@pytest.fixture
def env(sqlite_url: str) -> Iterator[Env]:
    store = Store.from_url(sqlite_url)
    refunds = Refunds(store)
    app = Celery("pausepoint-tool-surface-test", set_as_current=False)
    app.conf[FACTORY_KEY] = lambda _app: refunds.rt
    api = create_api(Settings(store_url=sqlite_url, api_keys=KEYS), celery_app=app)
    try:
        with start_blocking_portal() as portal:
            http = Http(portal, api)
            try:
                yield Env(http, refunds)
            finally:
                http.close()
    finally:
        forget_runtimes()  # closes the store
        app.close()


def test_the_page_shows_the_proposed_call_and_an_edit_box(env: Env) -> None:
    run_id = env.refunds.park()
    csrf = env.log_in()
    page = env.inbox()
    card = page[page.index(f'data-run="{run_id}"') :]
    assert "The proposed tool call" in card
    assert 'data-tool="refund"' in card
    pretty = json.dumps(PROPOSED, indent=2)
    assert f'<pre class="args proposed-arguments">{escaped(pretty)}</pre>' in card
    assert f"<strong>Its reason:</strong> {escaped(REASON)}" in card
    box = re.search(r'<label for="(arguments-[^"]+)">Arguments \(JSON\)</label>', card)
    assert box is not None
    textarea = re.search(
        rf'<textarea[^>]* id="{box.group(1)}" name="arguments"[^>]*>([^<]*)<', card
    )
    assert textarea is not None and textarea.group(1) == escaped(pretty)
    key = env.store.checkpoint(run_id).state["loop"]["calls"][0]["key"]
    assert f'<input type="hidden" name="call" value="{key}">' in card
    assert f'name="csrf" value="{csrf}"' in card
    # The proposed call is in the conversation too, with no result yet.
    assert '<li class="call" data-call="call_1">' in card and "no result yet" in card


def test_approving_edited_arguments_on_the_page_runs_the_edit(env: Env) -> None:
    run_id = env.refunds.park()
    csrf = env.log_in()
    key = env.store.checkpoint(run_id).state["loop"]["calls"][0]["key"]
    r = env.decide(
        run_id,
        csrf=csrf,
        call=key,
        decision="approve",
        arguments='{"order_id": "A-1",\n "amount": 40}',
        comment="40 is what the broken part cost",
    )
    assert r.headers["location"] == f"/ui/runs/{run_id}"
    env.refunds.drain()
    run = env.store.get_run(run_id)
    assert run.status == COMPLETED, run.error
    assert env.refunds.ran == [("A-1", 40.0)]
    record = env.refunds.tool_call_record(run_id)
    assert record["edited_by"] == "web:alice" and json.loads(record["arguments"]) == EDITED
    # The run page: the turn, its call as proposed, what it ran with, and its result.
    page = env.http.get(f"/ui/runs/{run_id}").text
    turn = page.index(escaped(REASON))
    call = page.index('<li class="call" data-call="call_1">')
    proposed = page.index(escaped(json.dumps(PROPOSED, indent=2)))
    edit = page.index("Edited by web:alice; the tool ran with:")
    ran_with = page.index(escaped(json.dumps(EDITED, indent=2)))
    result = page.index('<span class="role">result</span>refunded 40 on A-1')
    assert turn < call < proposed < edit < ran_with < result
    assert "done · decided by web:alice" in page


def test_approving_the_arguments_as_proposed_edits_nothing(env: Env) -> None:
    run_id = env.refunds.park()
    csrf = env.log_in()
    key = env.store.checkpoint(run_id).state["loop"]["calls"][0]["key"]
    env.decide(
        run_id, csrf=csrf, call=key, decision="approve", arguments=json.dumps(PROPOSED, indent=4)
    )
    env.refunds.drain()
    assert env.refunds.ran == [("A-1", 400.0)]
    record = env.refunds.tool_call_record(run_id)
    assert "edited_by" not in record and record["decided_by"] == "web:alice"


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ('{"order_id": "A-1", "amount": ', "the arguments field is not valid JSON"),
        ("", "the arguments field is not valid JSON"),
        ("[40]", "the arguments field must be a JSON object"),
        ('"amount: 40"', "the arguments field must be a JSON object"),
        ("[" * 200 + "]" * 200, "nested deeper"),
    ],
)
def test_bad_arguments_on_the_page_decide_nothing(env: Env, arguments: str, says: str) -> None:
    run_id = env.refunds.park()
    csrf = env.log_in()
    key = env.store.checkpoint(run_id).state["loop"]["calls"][0]["key"]
    flash = env.refused_on_page(
        run_id, says, csrf=csrf, call=key, decision="approve", arguments=arguments
    )
    assert flash.startswith("Nothing was decided: ")
    assert escaped(flash) in env.http.get(env.where).text
    assert f'data-run="{run_id}"' in env.inbox()  # still there to decide


def test_a_form_for_another_call_decides_nothing(env: Env) -> None:
    run_id = env.refunds.park()
    csrf = env.log_in()
    env.refused_on_page(
        run_id,
        "no longer waits on the tool call you saw",
        csrf=csrf,
        call=f"{run_id}:9:call_9",
        decision="approve",
        arguments=json.dumps(EDITED),
    )


def test_a_rejection_on_the_page_tells_the_model_its_reason(env: Env) -> None:
    run_id = env.refunds.park()
    csrf = env.log_in()
    key = env.store.checkpoint(run_id).state["loop"]["calls"][0]["key"]
    # A rejection ignores the arguments box, whatever is in it.
    env.decide(
        run_id, csrf=csrf, call=key, decision="reject", arguments="{", comment="over the limit"
    )
    env.refunds.drain()
    run = env.store.get_run(run_id)
    assert run.status == COMPLETED and env.refunds.ran == []
    said = "The call was rejected by web:alice: over the limit"
    assert run.result["answer"] == f"Finished: {said}"
    page = env.http.get(f"/ui/runs/{run_id}").text
    assert f'<span class="role">result</span>{said}' in page and "rejected" in page


def test_a_plain_approval_page_is_as_before(env: Env) -> None:
    run_id = env.refunds.park(env.refunds.plain.name)
    csrf = env.log_in()
    card = env.inbox()
    assert "Go on?" in card and "The agent's last answer" in card
    assert 'name="arguments"' not in card and 'name="call"' not in card
    env.decide(run_id, csrf=csrf, decision="approve", comment="fine")
    env.refunds.drain()
    assert env.store.get_run(run_id).result == {"ok": True}


def test_every_value_of_a_call_is_escaped(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    try:
        refunds = Refunds(store, {"order_id": "<script>alert(1)</script>", "amount": 400})
        run_id = refunds.park()
        refunds.rt.decide(run_id, approved=False, actor="<b>bob</b>", comment="<img src=x>")
        refunds.drain()
        html = timeline_html(store.history(run_id), store.events(run_id))
        assert "<script>" not in html and "<img" not in html and "<b>bob" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "&lt;img src=x&gt;" in html and "&lt;b&gt;bob&lt;/b&gt;" in html
    finally:
        store.close()


def test_the_api_json_has_tool_calls_and_results(env: Env) -> None:
    run_id = env.refunds.park()
    env.refunds.rt.decide(run_id, approved=True, actor="api:alice")
    env.refunds.drain()
    r = env.http.get(f"/runs/{run_id}", headers=auth(VIEWER))
    assert r.status_code == 200, r.text
    history = r.json()["history"]
    (turn,) = [m for m in history if m.get("tool_calls")]
    (call,) = turn["tool_calls"]
    assert call["id"] == "call_1" and call["type"] == "function"
    assert call["function"]["name"] == "refund"
    assert json.loads(call["function"]["arguments"]) == PROPOSED
    (result,) = [m for m in history if m["role"] == "tool"]
    assert result["tool_call_id"] == "call_1" and result["content"] == "refunded 400 on A-1"
    assert "tool_calls" not in result and "tool_call_id" not in turn
    seq = turn["seq"]
    view = env.http.get(f"/runs/{run_id}/checkpoints/{seq}", headers=auth(VIEWER)).json()
    assert [m.get("tool_calls") for m in view["history"]][-1] == turn["tool_calls"]


@pytest.mark.parametrize(
    "body",
    [{"arguments": EDITED}, {"input": {"arguments": EDITED}, "comment": "the broken part"}],
)
def test_the_api_approves_with_edited_arguments(env: Env, body: dict[str, Any]) -> None:
    run_id = env.refunds.park()
    r = env.http.post(f"/runs/{run_id}/approve", json=body, headers=auth(ALICE))
    assert r.status_code == 200, r.text
    env.refunds.drain()
    assert env.refunds.ran == [("A-1", 40.0)]
    assert env.refunds.tool_call_record(run_id)["edited_by"] == "api:alice"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"arguments": [40]}, "arguments: Input should be a valid dictionary"),
        ({"arguments": '{"amount": 40}'}, "arguments: Input should be a valid dictionary"),
        ({"input": {"arguments": "40"}}, "must be a JSON object"),
        ({"arguments": EDITED, "input": {"arguments": EDITED}}, "give the edited arguments once"),
    ],
)
def test_the_api_refuses_arguments_that_are_not_an_object(
    env: Env, body: dict[str, Any], says: str
) -> None:
    run_id = env.refunds.park()
    env.refused_by_api(f"/runs/{run_id}/approve", body, 422, says)
    assert env.store.get_run(run_id).status == WAITING and env.refunds.ran == []


def test_the_api_refuses_arguments_for_a_run_not_waiting_on_a_tool_call(env: Env) -> None:
    run_id = env.refunds.park(env.refunds.plain.name)
    env.refused_by_api(
        f"/runs/{run_id}/approve", {"arguments": EDITED}, 409, "does not wait on a tool call"
    )
    # Its own input may still carry a field of that name: the workflow reads it.
    r = env.http.post(
        f"/runs/{run_id}/approve", json={"input": {"arguments": "x"}}, headers=auth(ALICE)
    )
    assert r.status_code == 200, r.text


# ----------------------------------------------------------------------- CLI


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def parked(cli: Cli) -> Iterator[tuple[Refunds, str]]:
    """A refund waiting for its approval in the CLI's store."""
    with cli.store() as store:
        refunds = Refunds(store)
        yield refunds, refunds.park()


def test_cli_approves_with_edited_arguments(cli: Cli, parked: tuple[Refunds, str]) -> None:
    refunds, run_id = parked
    done = cli("approve", run_id[:12], "--arguments", '{"order_id": "A-1", "amount": 40}')
    assert_ok(done)
    assert "approved" in done.out
    # The worker's part, here: the resumed step runs the tool with the edit.
    run = refunds.store.get_run(run_id)
    refunds.rt.run_step(run.id, run.version, owner="test")
    assert refunds.ran == [("A-1", 40.0)]
    record = refunds.tool_call_record(run_id)
    assert record["edited_by"].startswith("cli:") and json.loads(record["arguments"]) == EDITED


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--arguments", '{"amount": '), ("--arguments", "not valid JSON")),
        (("--arguments", "[40]"), ("--arguments", "must be a JSON object")),
        (("--arguments", "40"), ("--arguments", "must be a JSON object")),
        (("--data", '{"arguments": 40}'), ("arguments of refund must be a JSON object",)),
        (
            ("--arguments", "{}", "--data", '{"arguments": {}}'),
            ("give the edited arguments once",),
        ),
    ],
)
def test_cli_refuses_bad_arguments(
    cli: Cli, parked: tuple[Refunds, str], args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    refunds, run_id = parked
    before = cli.snapshot()
    assert_refused(cli("approve", run_id, *args), *words)
    assert cli.snapshot() == before
    assert refunds.store.get_run(run_id).status == WAITING


def test_cli_refuses_arguments_for_a_plain_approval(cli: Cli, parked: tuple[Refunds, str]) -> None:
    refunds, _ = parked
    run_id = refunds.park(refunds.plain.name)
    before = cli.snapshot()
    assert_refused(
        cli("approve", run_id, "--arguments", '{"amount": 40}'), "does not wait on a tool call"
    )
    assert cli.snapshot() == before


def test_cli_show_draws_the_calls_and_their_results(cli: Cli, parked: tuple[Refunds, str]) -> None:
    refunds, run_id = parked
    refunds.rt.decide(run_id, approved=True, actor="carol", data={"arguments": EDITED})
    refunds.drain()
    shown = cli("show", run_id, COLUMNS="120")
    assert_ok(shown)
    out = shown.out
    turn = out.index(REASON)
    call = out.index("→ refund  call_1  done  decided by carol")
    proposed = out.index('"amount": 400')
    edited = out.index("edited by carol; it ran with:")
    found = re.compile(r'"amount": 40\b').search(out, edited)  # 40, not 400
    assert found is not None
    ran_with = found.start()
    result = out.index("← refunded 40 on A-1")
    assert turn < call < proposed < edited < ran_with < result
    as_json = cli("show", run_id, "--json")
    assert_ok(as_json)
    history = json.loads(as_json.out)["history"]
    assert [m["tool_calls"][0]["function"]["name"] for m in history if "tool_calls" in m] == [
        "refund"
    ]
    assert [m["tool_call_id"] for m in history if m["role"] == "tool"] == ["call_1"]


def test_cli_show_at_a_checkpoint_draws_the_call(cli: Cli, parked: tuple[Refunds, str]) -> None:
    refunds, run_id = parked
    seq = refunds.store.get_run(run_id).seq
    shown = cli("show", run_id, "--at", str(seq), COLUMNS="120")
    assert_ok(shown)
    assert "→ refund  call_1" in shown.out and "no result yet" in shown.out


def escaped(text: str) -> str:
    return html.escape(text, quote=True)
