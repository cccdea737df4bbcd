"""The approval page: approvers see the runs waiting for them and decide, in a browser.

Plain server-side HTML: every value from the store goes through ``html.escape``.
Log-in takes an API key and sets a signed, expiring, HttpOnly, SameSite=Strict
session cookie; every form carries a CSRF token derived from that session.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from pausepoint.persistence.errors import Forbidden, PausepointError, Unauthorized
from pausepoint.persistence.records import APPROVAL, FINISHED, PENDING, RunRecord, WaitRecord
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.auth import SESSION_SECONDS, Keyring, Principal

COOKIE = "pausepoint_session"

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:.8rem 1.5rem;display:flex;justify-content:space-between;align-items:center}
header a{color:#fff}header button{color:#1d2330;background:#fff;border-color:#fff;margin-left:.5rem}
main{max-width:960px;margin:1.5rem auto;padding:0 1rem}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:1rem 1.2rem;margin-bottom:1rem}
.muted{color:#667}.due{font-weight:600}.late{color:#b00}
.answer{white-space:pre-wrap;background:#f0f3f7;border-left:3px solid #4a7;padding:.6rem .8rem}
.msg{white-space:pre-wrap;margin:.3rem 0}.role{font-weight:600;margin-right:.4rem}
textarea{width:100%;min-height:4rem;box-sizing:border-box}
button{padding:.45rem 1rem;border-radius:5px;border:1px solid #999;cursor:pointer;font-size:1rem}
.approve{background:#2e7d32;color:#fff;border-color:#2e7d32}.reject{background:#c62828;color:#fff;border-color:#c62828}
.status{font-weight:700;text-transform:uppercase}.flash{background:#fff3cd;padding:.6rem 1rem;border-radius:6px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee;font-size:.9rem}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(
    title: str, body: str, principal: Principal | None = None, refresh: int = 0
) -> HTMLResponse:
    who = ""
    if principal is not None:
        who = (
            f'<form method="post" action="/ui/logout" style="margin:0">{esc(principal.name)} '
            f'<button type="submit">Log out</button></form>'
        )
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return HTMLResponse(
        f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{meta}
<title>{esc(title)} · Pausepoint</title><style>{STYLE}</style></head>
<body><header><a href="/ui" style="text-decoration:none"><strong>Pausepoint</strong> approvals</a>{who}</header>
<main>{body}</main></body></html>"""
    )


def deadline_text(deadline: datetime | None) -> str:
    if deadline is None:
        return '<span class="muted">no deadline</span>'
    left = (deadline - datetime.now(timezone.utc)).total_seconds()
    when = deadline.strftime("%Y-%m-%d %H:%M UTC")
    if left < 0:
        return f'<span class="due late">overdue since {esc(when)}</span>'
    hours = left / 3600
    rel = f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"
    return f'<span class="due">due {esc(when)}</span> <span class="muted">(in {rel})</span>'


def mount_ui(api: FastAPI, rt: Runtime, keyring: Keyring) -> None:
    store = rt.store

    def session(request: Request) -> tuple[Principal, str]:
        cookie = request.cookies.get(COOKIE, "")
        return keyring.from_session(cookie), cookie

    async def form(request: Request) -> dict[str, str]:
        raw = (await request.body()).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    @api.get("/ui/login", include_in_schema=False)
    def login_page(error: str = "") -> HTMLResponse:
        note = f'<p class="flash" role="alert">{esc(error)}</p>' if error else ""
        return page(
            "Log in",
            f"""<div class="card"><h1>Log in</h1>{note}
<form method="post" action="/ui/login">
<label for="key">Your API key</label><br>
<input id="key" name="key" type="password" autocomplete="current-password" required style="width:100%;padding:.4rem">
<p><button type="submit" class="approve">Log in</button></p></form></div>""",
        )

    @api.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        fields = await form(request)
        try:
            principal = keyring.authenticate(fields.get("key", ""))
        except Unauthorized as exc:
            return RedirectResponse(f"/ui/login?error={quote(str(exc))}", status_code=303)
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(
            COOKIE,
            keyring.session_for(principal),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            path="/ui",
        )
        return response

    @api.post("/ui/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @api.get("/ui", include_in_schema=False)
    def inbox(request: Request, flash: str = "") -> Response:
        try:
            principal, cookie = session(request)
        except Unauthorized:
            return RedirectResponse("/ui/login", status_code=303)
        groups = None if "admin" in principal.roles else principal.groups
        waiting = [
            w
            for w in store.waits(status=PENDING)
            if w.kind == APPROVAL and (groups is None or w.approver_group in groups)
        ]
        cards = [_card(store.get_run(w.run_id), w, keyring.csrf_token(cookie)) for w in waiting]
        note = f'<p class="flash" role="status">{esc(flash)}</p>' if flash else ""
        empty = '<p class="card muted">Nothing is waiting for you.</p>'
        title = f"Waiting for you ({len(cards)})"
        return page("Approvals", f"<h1>{title}</h1>{note}{''.join(cards) or empty}", principal)

    def _card(run: RunRecord, wait: WaitRecord, csrf: str) -> str:
        history = store.history(run.id, stop=run.history_len)
        answer = next((m.content for m in reversed(history) if m.role == "assistant"), "")
        turns = "".join(
            f'<div class="msg"><span class="role">{esc(m.role)}</span>{esc(m.content)}</div>'
            for m in history
        )
        return f"""<section class="card" data-run="{esc(run.id)}">
<h2>{esc(run.task or run.workflow)}</h2>
<p class="muted">run <code>{esc(run.id)}</code> · agent {esc(run.agent_name)} · workflow {esc(run.workflow)}
· group {esc(wait.approver_group or "any")}</p>
<p>{esc(wait.prompt)}</p>
<p>{deadline_text(wait.deadline)}</p>
<h3>The agent's last answer</h3><div class="answer">{esc(answer) or '<span class="muted">none</span>'}</div>
<details><summary>Conversation ({len(history)} messages)</summary>{turns}</details>
<form method="post" action="/ui/runs/{esc(run.id)}/decide">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<label for="comment-{esc(run.id)}">Comment</label>
<textarea id="comment-{esc(run.id)}" name="comment"></textarea>
<p><button type="submit" name="decision" value="approve" class="approve">Approve</button>
<button type="submit" name="decision" value="reject" class="reject">Reject</button></p>
</form></section>"""

    @api.post("/ui/runs/{run_id}/decide", include_in_schema=False)
    async def decide(run_id: str, request: Request) -> Response:
        try:
            principal, cookie = session(request)
        except Unauthorized:
            return RedirectResponse("/ui/login", status_code=303)
        fields = await form(request)
        try:
            keyring.check_csrf(cookie, fields.get("csrf", ""))
            decision = fields.get("decision")
            if decision not in ("approve", "reject"):
                raise Forbidden("choose approve or reject")
            await run_in_threadpool(
                rt.decide,
                run_id,
                approved=decision == "approve",
                actor=f"web:{principal.name}",
                comment=fields.get("comment", "")[:10_000],
                groups=principal.approver_groups(),
            )
        except PausepointError as exc:
            return RedirectResponse(f"/ui?flash={quote(str(exc))}", status_code=303)
        return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)

    @api.get("/ui/runs/{run_id}", include_in_schema=False)
    def run_page(run_id: str, request: Request) -> Response:
        try:
            principal, _ = session(request)
        except Unauthorized:
            return RedirectResponse("/ui/login", status_code=303)
        try:
            run = store.get_run(run_id)
        except PausepointError as exc:
            return page("Not found", f'<p class="card">{esc(exc)}</p>', principal)
        history = store.history(run.id, stop=run.history_len)
        turns = "".join(
            f'<div class="msg"><span class="role">{esc(m.role)}</span>{esc(m.content)}</div>'
            for m in history
        )
        rows = "".join(
            f"<tr><td>{e.n}</td><td>{esc(e.created_at.strftime('%H:%M:%S'))}</td>"
            f"<td>{esc(e.kind)}</td><td>{esc(e.actor)}</td></tr>"
            for e in store.events(run.id)
        )
        result = (
            f'<p>Result: <code id="result">{esc(run.result)}</code></p>' if run.finished else ""
        )
        error = f'<p class="late">{esc(run.error)}</p>' if run.error else ""
        body = f"""<div class="card"><h1>{esc(run.task or run.workflow)}</h1>
<p>Status: <span class="status" id="status">{esc(run.status)}</span>
{"" if run.finished else '<span class="muted">(this page refreshes)</span>'}</p>{result}{error}
<p class="muted">run <code>{esc(run.id)}</code> · agent {esc(run.agent_name)}</p></div>
<div class="card"><h2>Conversation</h2>{turns or '<p class="muted">empty</p>'}</div>
<div class="card"><h2>Audit trail</h2><table><tr><th>#</th><th>at</th><th>event</th><th>by</th></tr>{rows}</table></div>
<p><a href="/ui">Back to the approvals</a></p>"""
        return page("Run", body, principal, refresh=0 if run.status in FINISHED else 2)
