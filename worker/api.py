"""The HTTP API (FastAPI): producers start runs, people decide, systems call back.

    pausepoint api            # uvicorn on PAUSEPOINT_API_HOST:PAUSEPOINT_API_PORT

Every error is a JSON body ``{"error": "..."}`` with a 4xx status; nothing
stored changes when a request is refused. The approval page lives in
:mod:`worker.web`, on the same app.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pausepoint.persistence.errors import (
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    PausepointError,
    Unauthorized,
)
from pausepoint.persistence.jsonvalues import MAX_SEQ, json_problem
from pausepoint.persistence.jsonvalues import parse_json as parse_json_text
from pausepoint.persistence.records import PENDING, RUN_STATUSES
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.tokens import parse_token, verify_signature
from pausepoint.worker.auth import Keyring, Principal
from pausepoint.worker.serialize import decision_data, plain
from pausepoint.worker.settings import Settings


class PayloadTooLarge(PausepointError):
    """The request body is larger than PAUSEPOINT_MAX_BODY_BYTES."""


STATUS_OF: list[tuple[type[Exception], int]] = [
    (PayloadTooLarge, 413),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Gone, 410),
    (Conflict, 409),
    (InvalidInput, 422),
]


def _bounded(value: Any) -> Any:
    # Checked here too, so the 422 names the field; the store refuses the same values.
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


BoundedObject = Annotated[dict[str, Any], AfterValidator(_bounded)]


class StartRun(BaseModel):
    workflow: str = Field(min_length=1, max_length=200)
    agent: str = Field(min_length=1, max_length=200)
    task: str = ""
    input: BoundedObject = Field(default_factory=dict)


class Decision(BaseModel):
    comment: str = Field("", max_length=10_000)
    input: BoundedObject | None = Field(None, description="Edited input for the next step.")
    arguments: BoundedObject | None = Field(
        None,
        description="For a run that waits on a tool call: the arguments to run it with "
        "instead of the model's (a JSON object). The same as `input.arguments`.",
    )


REASON_MAX = 2000


class Rollback(BaseModel):
    """Continue the run from checkpoint ``to_seq``: queued for its next step, or parked again."""

    model_config = ConfigDict(extra="forbid")

    to_seq: int = Field(
        ge=0, le=MAX_SEQ, strict=True, description="The checkpoint to continue from."
    )
    reason: str = Field("", max_length=REASON_MAX, description="Why; kept in the audit trail.")


class Fork(BaseModel):
    """A new run from checkpoint ``at_seq`` of this one (its latest by default)."""

    model_config = ConfigDict(extra="forbid")

    at_seq: int | None = Field(
        None, ge=0, le=MAX_SEQ, strict=True, description="Default: the latest."
    )
    reason: str = Field("", max_length=REASON_MAX, description="Why; kept in the audit trail.")


class Hold(BaseModel):
    """Put the run under legal hold (retention leaves it alone), or lift the hold."""

    model_config = ConfigDict(extra="forbid")

    on: bool = Field(True, strict=True)
    reason: str = Field("", max_length=REASON_MAX, description="Why; kept in the audit trail.")


def principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller, from `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    key = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    keyring: Keyring = request.app.state.keyring
    return keyring.authenticate(key)


Caller = Annotated[Principal, Depends(principal)]


def create_api(settings: Settings | None = None, *, celery_app: Celery | None = None) -> FastAPI:
    """The API on the store and broker that ``settings`` name."""
    from pausepoint.worker.app import create_app, runtime

    settings = settings or Settings()
    celery_app = celery_app or create_app(settings)
    rt: Runtime = runtime(celery_app)
    # Sessions have a key of their own: the store's secret is readable by whoever reads
    # the store, and with it they could sign an admin's session.
    keyring = Keyring(settings.api_keys, settings.session_bytes() or os.urandom(32))
    api = FastAPI(
        title="Pausepoint",
        version="0.1.0",
        description="Durable, pausable AI agents: start runs, decide approvals, call back.",
    )
    api.state.runtime = rt
    api.state.keyring = keyring
    api.state.settings = settings

    @api.exception_handler(PausepointError)
    async def _known(request: Request, exc: PausepointError) -> JSONResponse:
        for cls, status in STATUS_OF:
            if isinstance(exc, cls):
                return JSONResponse({"error": str(exc)}, status_code=status)
        return JSONResponse({"error": str(exc)}, status_code=400)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                where = e.get("loc", ("body", "?"))[-1]
                problems.append(f"the body is not valid JSON (at character {where})")
            else:
                field = ".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
                problems.append(f"{field}: {e.get('msg')}")
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    api.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    api.add_middleware(NoFraming)

    @api.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        with rt.store.read() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    from pausepoint.worker.metrics import CONTENT_TYPE, api_registry

    registry = api_registry(rt.store)

    @api.get("/metrics", tags=["ops"], response_class=Response)
    def metrics(caller: Caller) -> Response:
        """Prometheus metrics (any API key): runs by status and workflow, waits pending by
        kind and the age of the oldest, read from the store at the scrape; and this API
        process's own (CPU, memory). Workers serve theirs on `--metrics-port`."""
        from prometheus_client import generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    @api.post("/runs", status_code=201, tags=["producers"])
    def start_run(
        body: StartRun,
        caller: Caller,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Start a run. With an `Idempotency-Key`, a retried request returns the same run."""
        caller.require("producer")
        run, created = rt.start_run(
            body.workflow,
            agent=body.agent,
            task=body.task,
            input=body.input,
            idempotency_key=idempotency_key,
            actor=caller.actor,
        )
        return JSONResponse(plain(run), status_code=201 if created else 200)

    @api.get("/runs", tags=["producers"])
    def list_runs(
        caller: Caller,
        status: str | None = None,
        agent: str | None = None,
        workflow: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in RUN_STATUSES:
            raise InvalidInput(f"unknown status {status!r}; one of: {', '.join(RUN_STATUSES)}")
        runs = rt.store.list_runs(status=status, agent=agent, workflow=workflow, limit=limit)
        return [plain(r) for r in runs]

    @api.get("/runs/{run_id}/audit", tags=["auditors"])
    def audit(run_id: str, caller: Caller) -> dict[str, Any]:
        """Verify the run in one snapshot: its keyed hash chain, the checkpoints, messages,
        decisions and result its events bind, and the ledger's record of it. `ok`, the first
        bad event and every finding, and how far it proves (`keyed`/`unkeyed` events)."""
        return rt.store.audit(run_id).as_json()

    @api.post("/runs/{run_id}/rollback", tags=["operators"])
    def rollback(run_id: str, body: Rollback, caller: Caller) -> Any:
        """Continue a run (not running) from checkpoint `to_seq`: nothing is deleted; a new
        checkpoint equal to that one is appended and the run re-queued or parked again."""
        caller.require("admin")
        return plain(rt.rollback(run_id, body.to_seq, actor=caller.actor, reason=body.reason))

    @api.post("/runs/{run_id}/fork", status_code=201, tags=["operators"])
    def fork(run_id: str, caller: Caller, body: Fork | None = None) -> Any:
        """A new run from checkpoint `at_seq` (the latest by default) of this one."""
        caller.require("admin")
        body = body or Fork()
        return plain(rt.fork(run_id, body.at_seq, actor=caller.actor, reason=body.reason))

    @api.post("/runs/{run_id}/hold", tags=["operators"])
    def hold(run_id: str, caller: Caller, body: Hold | None = None) -> Any:
        """Put the run under legal hold (`{"on": false}` lifts it): retention leaves it alone."""
        caller.require("admin")
        body = body or Hold()
        return plain(rt.set_legal_hold(run_id, body.on, actor=caller.actor, reason=body.reason))

    def decide(run_id: str, approved: bool, body: Decision | None, caller: Principal) -> Any:
        groups = caller.approver_groups()
        data = None
        if body is not None:
            data = decision_data(rt.store, run_id, body.input, body.arguments)
        run = rt.decide(
            run_id,
            approved=approved,
            actor=caller.actor,
            comment=body.comment if body else "",
            data=data,
            groups=groups,
        )
        return plain(run)

    @api.post("/runs/{run_id}/approve", tags=["people"])
    def approve(run_id: str, caller: Caller, body: Decision | None = None) -> Any:
        """Approve the run's pending approval (an approver of its group, or an admin)."""
        return decide(run_id, True, body, caller)

    @api.post("/runs/{run_id}/reject", tags=["people"])
    def reject(run_id: str, caller: Caller, body: Decision | None = None) -> Any:
        return decide(run_id, False, body, caller)

    @api.get("/waits", tags=["people"])
    def list_waits(caller: Caller) -> list[dict[str, Any]]:
        return [plain(w) for w in rt.store.waits(status=PENDING)]

    @api.post("/callbacks/{token}", tags=["systems"])
    async def callback(
        token: str,
        request: Request,
        x_pausepoint_timestamp: Annotated[str | None, Header()] = None,
        x_pausepoint_signature: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """An external system's result for the run that handed out this URL.

        Signed with HMAC-SHA256 when its source has a secret (`X-Pausepoint-Timestamp`,
        `X-Pausepoint-Signature: sha256=...` over `timestamp.body`).
        """
        raw = await read_body(request, settings.max_body_bytes)
        parsed = parse_token(rt.secret, token)
        if parsed is None:
            raise NotFound("unknown callback token")
        source = parsed.source
        secret = settings.callback_secrets.get(source) if source else None
        if secret is not None:
            problem = verify_signature(
                secret.get_secret_value(),
                x_pausepoint_timestamp,
                x_pausepoint_signature,
                raw,
                time.time(),
                token=token,
            )
            if problem:
                raise Unauthorized(f"bad signature: {problem}")
        payload = parse_json(raw)
        outcome, run = await run_in_threadpool(
            rt.deliver_callback, token, payload, actor=f"source:{source or 'callback'}"
        )
        if outcome == "stored":
            return JSONResponse(
                {
                    "status": "stored",
                    "detail": "the run has not parked yet; delivered when it does",
                },
                status_code=202,
            )
        return JSONResponse({"status": "resumed", "run": run.id if run else None})

    @api.post("/events/{name}", tags=["systems"])
    async def event(name: str, request: Request, caller: Caller) -> dict[str, Any]:
        """Resume every run waiting for event `name` whose key equals the body's `key`."""
        caller.require("system")
        raw = await read_body(request, settings.max_body_bytes)
        payload = parse_json(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
            raise InvalidInput('an event body is a JSON object with a string "key"')
        resumed = await run_in_threadpool(
            rt.publish_event, name, payload["key"], payload, actor=caller.actor
        )
        return {"resumed": [r.id for r in resumed]}

    from pausepoint.worker.memory_api import add_memory_routes
    from pausepoint.worker.reads_api import add_read_routes
    from pausepoint.worker.web import mount_ui

    add_read_routes(api, rt)
    add_memory_routes(api, rt)

    mount_ui(api, rt, keyring)
    return api


class NoFraming:
    """No page of ours may be framed by another site (a framed approval page decided a
    run with one click): ``X-Frame-Options`` for old browsers, CSP for the others."""

    HEADERS = (
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                for i, (name, value) in enumerate(headers):
                    if (
                        name.lower() == b"content-security-policy"
                        and b"frame-ancestors" not in value
                    ):
                        headers[i] = (name, value + b"; frame-ancestors 'none'")
                headers += [(n, v) for n, v in self.HEADERS if n not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, framed)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes: by Content-Length before reading, and by
    counting what arrives for chunked bodies, whichever route reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.limit} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await JSONResponse({"error": too_large}, status_code=413)(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # An HTTPException passes through FastAPI's body parsing unchanged.
                    raise StarletteHTTPException(413, too_large)
            return message

        await self.app(scope, counted, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes even without a Content-Length."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """A body as JSON within the store's limits (depth, integer size), or a 422."""
    return parse_json_text(raw, "the body") if raw.strip() else {}
