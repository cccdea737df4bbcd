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

from pausepoint.persistence.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    PausepointError,
    Unauthorized,
)
from pausepoint.persistence.jsonvalues import parse_json
from pausepoint.persistence.records import (
    APPROVAL,
    FINISHED,
    PENDING,
    Event,
    Message,
    RunRecord,
    WaitRecord,
)
from pausepoint.persistence.store import Store
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.auth import SESSION_SECONDS, Keyring, Principal
from pausepoint.worker.serialize import (
    conversation,
    message_json,
    pending_tool_call,
    pretty_arguments,
)

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
.calls{list-style:none;margin:.2rem 0 .6rem 1.2rem;padding:0}.call{border-left:3px solid #c90;padding:.3rem .7rem;margin:.4rem 0;background:#fbf8f0}
.tool{font-weight:700}pre.args{background:#f0f3f7;padding:.5rem .7rem;margin:.3rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
.proposed{border:1px solid #c90;border-radius:6px;padding:.2rem 1rem;margin:.6rem 0}textarea.json{font-family:ui-monospace,monospace;min-height:7rem}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee;font-size:.9rem}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(
    title: str,
    body: str,
    principal: Principal | None = None,
    refresh: int = 0,
    csrf: str = "",
) -> HTMLResponse:
    who = ""
    if principal is not None:
        who = (
            f'<form method="post" action="/ui/logout" style="margin:0">{esc(principal.name)} '
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
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


def timeline_html(messages: list[Message], events: list[Event]) -> str:
    """The conversation, escaped: each message a ``.msg``, and under an assistant turn
    each tool call it made (name, arguments, how it went) with its result."""
    out = []
    for entry in conversation([message_json(m) for m in messages], events):
        out.append(_msg(entry))
        calls = "".join(_call_html(c) for c in entry["calls"])
        if calls:
            out.append(f'<ol class="calls">{calls}</ol>')
    return "".join(out)


def _msg(m: dict[str, Any], role: str | None = None) -> str:
    return (
        f'<div class="msg" data-idx="{esc(m["idx"])}"><span class="role">{esc(role or m["role"])}</span>'
        f"{esc(m.get('content') or '')}</div>"
    )


def _call_html(call: dict[str, Any]) -> str:
    how = []
    if call.get("outcome"):
        how.append(esc(call["outcome"]))
    if call.get("decided_by"):
        how.append(f"decided by {esc(call['decided_by'])}")
    head = (
        f'<span class="tool">{esc(call["name"])}</span> <code class="muted">{esc(call["id"])}</code>'
        + (f' <span class="muted">· {" · ".join(how)}</span>' if how else "")
    )
    edited = ""
    if call.get("ran_with"):
        edited = (
            f"<p>Edited by {esc(call.get('edited_by'))}; the tool ran with:</p>"
            f'<pre class="args">{esc(call["ran_with"])}</pre>'
        )
    result = call["result"]
    shown = _msg(result, "result") if result is not None else '<p class="muted">no result yet</p>'
    return (
        f'<li class="call" data-call="{esc(call["id"])}">{head}'
        f'<pre class="args">{esc(call["arguments"])}</pre>{edited}{shown}</li>'
    )


def _proposed_html(call: dict[str, Any]) -> str:
    reason = call["reason"] or "(the model gave none)"
    return f"""<div class="proposed"><h3>The proposed tool call</h3>
<p>Tool <span class="tool" data-tool="{esc(call["name"])}">{esc(call["name"])}</span> <code class="muted">{esc(call["id"])}</code></p>
<pre class="args proposed-arguments">{esc(pretty_arguments(call["arguments"]))}</pre>
<p><strong>Its reason:</strong> {esc(reason)}</p></div>"""


def edited_arguments(store: Store, run_id: str, fields: dict[str, str]) -> dict[str, Any] | None:
    """The decision's data from an approval form: ``{"arguments": ...}`` when the approver
    changed the proposed call's arguments, None otherwise. Raises Conflict when the run
    no longer waits on the call the form showed, InvalidInput for arguments that are not
    a JSON object; nothing is decided then."""
    key = fields.get("call")
    if key is None:
        return None  # the form of an approval that is not about a tool call
    call = pending_tool_call(store, store.get_run(run_id))
    if call is None or call["key"] != key:
        raise Conflict(
            f"run {run_id} no longer waits on the tool call you saw; nothing was decided. "
            "The list below shows what waits now."
        )
    if fields.get("decision") != "approve" or "arguments" not in fields:
        return None
    try:
        edited = parse_json(fields["arguments"], "the arguments field")
    except InvalidInput as exc:
        raise InvalidInput(
            f"Nothing was decided: {exc}. Fix the arguments and approve again."
        ) from None
    if not isinstance(edited, dict):
        raise InvalidInput(
            "Nothing was decided: the arguments field must be a JSON object, like "
            '{"amount": 40}. Fix the arguments and approve again.'
        )
    return None if edited == call["parsed"] else {"arguments": edited}


def mount_ui(api: FastAPI, rt: Runtime, keyring: Keyring) -> None:
    store = rt.store

    def noted(path: str, name: str, text: str) -> str:
        """``path`` with a message the page will show (signed: see Keyring.note_mac)."""
        return f"{path}?{name}={quote(text)}&sig={keyring.note_mac(text)}"

    def session(request: Request) -> tuple[Principal, str]:
        cookie = request.cookies.get(COOKIE, "")
        return keyring.from_session(cookie), cookie

    async def form(request: Request) -> dict[str, str]:
        raw = (await request.body()).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    @api.get("/ui/login", include_in_schema=False)
    def login_page(error: str = "", sig: str = "") -> HTMLResponse:
        shown = error if error and keyring.note_ok(error, sig) else ""
        note = f'<p class="flash" role="alert">{esc(shown)}</p>' if shown else ""
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
            return RedirectResponse(noted("/ui/login", "error", str(exc)), status_code=303)
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
    async def logout(request: Request) -> Response:
        # Only the page's own form logs out (its CSRF token): another site cannot.
        try:
            _, cookie = session(request)
            keyring.check_csrf(cookie, (await form(request)).get("csrf", ""))
        except Unauthorized:
            pass  # no session to end: just clear the cookie
        except Forbidden as exc:
            return RedirectResponse(noted("/ui", "flash", str(exc)), status_code=303)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @api.get("/ui", include_in_schema=False)
    def inbox(request: Request, flash: str = "", sig: str = "") -> Response:
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
        shown = flash if flash and keyring.note_ok(flash, sig) else ""
        note = f'<p class="flash" role="status">{esc(shown)}</p>' if shown else ""
        empty = '<p class="card muted">Nothing is waiting for you.</p>'
        title = f"Waiting for you ({len(cards)})"
        body = f"<h1>{title}</h1>{note}{''.join(cards) or empty}"
        return page("Approvals", body, principal, csrf=keyring.csrf_token(cookie))

    def _card(run: RunRecord, wait: WaitRecord, csrf: str) -> str:
        history = store.history(run.id, stop=run.history_len)
        call = pending_tool_call(store, run)
        # The trail says how earlier calls went; a run without any needs no query for it.
        called = any(m.data and m.data.get("tool_calls") for m in history)
        turns = timeline_html(history, store.events(run.id) if called else [])
        rid = esc(run.id)
        if call is None:
            answer = next((m.content for m in reversed(history) if m.role == "assistant"), "")
            about = f"""<p>{esc(wait.prompt)}</p>
<p>{deadline_text(wait.deadline)}</p>
<h3>The agent's last answer</h3><div class="answer">{esc(answer) or '<span class="muted">none</span>'}</div>"""
            edit = ""
            comment = "Comment"
        else:
            about = f"""<p>{esc(run.agent_name)} wants to call <strong>{esc(call["name"])}</strong>: approve, reject with a reason, or approve with edited arguments.</p>
<p>{deadline_text(wait.deadline)}</p>{_proposed_html(call)}"""
            edit = f"""<input type="hidden" name="call" value="{esc(call["key"])}">
<label for="arguments-{rid}">Arguments (JSON)</label> <span class="muted">change them, then approve, to run the tool with yours</span>
<textarea class="json" id="arguments-{rid}" name="arguments" spellcheck="false">{esc(pretty_arguments(call["arguments"]))}</textarea>"""
            comment = "Comment (on a rejection, the reason the agent reads)"
        return f"""<section class="card" data-run="{rid}">
<h2>{esc(run.task or run.workflow)}</h2>
<p class="muted">run <code>{rid}</code> · agent {esc(run.agent_name)} · workflow {esc(run.workflow)}
· group {esc(wait.approver_group or "any")}</p>
{about}
<details><summary>Conversation ({len(history)} messages)</summary>{turns}</details>
<form method="post" action="/ui/runs/{rid}/decide">
<input type="hidden" name="csrf" value="{esc(csrf)}">{edit}
<label for="comment-{rid}">{comment}</label>
<textarea id="comment-{rid}" name="comment"></textarea>
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
            data = await run_in_threadpool(edited_arguments, store, run_id, fields)
            await run_in_threadpool(
                rt.decide,
                run_id,
                approved=decision == "approve",
                actor=f"web:{principal.name}",
                comment=fields.get("comment", "")[:10_000],
                data=data,
                groups=principal.approver_groups(),
            )
        except PausepointError as exc:
            return RedirectResponse(noted("/ui", "flash", str(exc)), status_code=303)
        return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)

    @api.get("/ui/runs/{run_id}", include_in_schema=False)
    def run_page(run_id: str, request: Request) -> Response:
        try:
            principal, cookie = session(request)
        except Unauthorized:
            return RedirectResponse("/ui/login", status_code=303)
        csrf = keyring.csrf_token(cookie)
        try:
            run = store.get_run(run_id)
        except PausepointError as exc:
            return page("Not found", f'<p class="card">{esc(exc)}</p>', principal, csrf=csrf)
        history = store.history(run.id, stop=run.history_len)
        events = store.events(run.id)
        turns = timeline_html(history, events)
        rows = "".join(
            f"<tr><td>{e.n}</td><td>{esc(e.created_at.strftime('%H:%M:%S'))}</td>"
            f"<td>{esc(e.kind)}</td><td>{esc(e.actor)}</td></tr>"
            for e in events
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
        refresh = 0 if run.status in FINISHED else 2
        return page("Run", body, principal, refresh=refresh, csrf=csrf)
