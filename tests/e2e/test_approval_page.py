"""The approval page in a real browser: Chromium against a real `pausepoint api` and worker.

An approver logs in with their API key, reads what the agent found, and approves; the run
finishes on the worker. Approver groups, HTML escaping and CSRF are checked the same way,
through the page a person uses. The browser part does not depend on the backend, so these
run on the embedded one only (CI time).
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pausepoint.persistence.records import APPROVAL, COMPLETED, WAITING
from tests.e2e.browser import chromium_page
from tests.integration import conftest as integration
from tests.integration.conftest import Cluster

# The `cluster` fixture (real worker and API processes), made visible to this module.
cluster = integration.cluster

if TYPE_CHECKING:
    from playwright.sync_api import Dialog, Locator, Page
    from playwright.sync_api._generated import LocatorAssertions

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("cluster", ["embedded"], indirect=True),
]

COOKIE = "pausepoint_session"
SCREENS = Path("/tmp/pausepoint-screens")
ADA = "Loan application from Ada: amount 20000, income 90000, debt 3000"
BOB = "Loan application from Bob: amount 1000, income 50000, debt 0"
FINISH_TIMEOUT_MS = 30_000


# --------------------------------------------------------------------------- helpers


def expect(locator: Locator) -> LocatorAssertions:
    """Playwright's ``expect``, imported late: chromium_page() skips or fails without it."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def park(c: Cluster, task: str, approver_group: str | None = None, **input: object) -> str:
    """Start a loan run and wait until it waits for an approval; its id. The group that
    decides is the agent's setting: another group gets an agent of its own."""
    agent = "loan_processor"
    if approver_group is not None:
        agent = f"loans_for_{approver_group}"
        c.store.save_agent(
            agent,
            persona="I am a loan processing assistant.",
            model={"approver_group": approver_group},
        )
    run = c.runtime.start("loan", agent=agent, task=task, input=dict(input))
    c.wait_for([run.id], lambda r: r.status == WAITING, "the run to wait for approval")
    return run.id


def watch_dialogs(page: Page) -> list[str]:
    """Every alert/confirm/prompt the page opens (dismissed), to assert there were none."""
    seen: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        seen.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def session_cookies(page: Page) -> list[dict[str, object]]:
    return [dict(c) for c in page.context.cookies() if c["name"] == COOKIE]


def log_in(page: Page, url: str, key: str) -> None:
    """Open the inbox, get sent to the log-in page, and log in with ``key``."""
    page.goto(f"{url}/ui")
    page.wait_for_url(f"{url}/ui/login")
    page.get_by_label("Your API key").fill(key)
    page.get_by_role("button", name="Log in").click()


def shoot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page PNG in tmp_path, copied to /tmp/pausepoint-screens for people to look at."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENS / name)
    return shot


def csrf_of(page: Page, run_id: str) -> str:
    value = page.locator(f'section[data-run="{run_id}"] input[name=csrf]').get_attribute("value")
    assert value, "the decide form carries a CSRF token"
    return value


# --------------------------------------------------------------------------- 1. the journey


def test_an_approver_logs_in_reads_the_run_and_approves_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.worker("w1")
    api = cluster.api()
    run_id = park(cluster, ADA)
    (wait,) = [w for w in cluster.store.waits(run_id) if w.kind == APPROVAL]
    history = cluster.store.history(run_id, stop=cluster.store.get_run(run_id).history_len)
    comment = "Payslips checked against the bank statements; fine by me."

    with chromium_page() as page:
        dialogs = watch_dialogs(page)
        page.goto(f"{api.url}/ui")
        page.wait_for_url(f"{api.url}/ui/login")  # no session: sent to log in
        assert session_cookies(page) == []
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        page.get_by_label("Your API key").fill("key-alice")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{api.url}/ui")

        (cookie,) = session_cookies(page)
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert "key-alice" not in str(cookie["value"])  # the cookie names the key, not holds it
        expect(page.locator("header")).to_contain_text("alice")
        expect(page.get_by_role("heading", level=1)).to_have_text("Waiting for you (1)")

        card = page.locator(f'section[data-run="{run_id}"]')
        expect(card).to_have_count(1)
        expect(card.get_by_role("heading", level=2)).to_have_text(ADA)
        expect(card).to_contain_text("group underwriters")
        expect(card).to_contain_text(wait.prompt)
        expect(card.get_by_role("heading", name="The agent's last answer")).to_be_visible()
        answer = card.locator(".answer")
        expect(answer).to_contain_text("RECOMMENDATION: APPROVE")
        assert answer.text_content() == history[-1].content  # the last answer, verbatim
        assert wait.deadline is not None
        expect(card.locator(".due")).to_have_text(
            "due " + wait.deadline.strftime("%Y-%m-%d %H:%M UTC")
        )
        expect(card).to_contain_text(re.compile(r"\(in [23]\.\d days\)"))  # 72 hours

        # The conversation is folded away in a <details>, and opens on a click.
        details = card.locator("details")
        expect(details).to_have_count(1)
        expect(details.locator("summary")).to_have_text(f"Conversation ({len(history)} messages)")
        assert details.get_attribute("open") is None
        expect(details.locator(".msg").first).to_be_hidden()
        details.locator("summary").click()
        expect(details).to_have_attribute("open", "")
        expect(details.locator(".msg")).to_have_count(len(history))
        expect(details.locator(".msg").first).to_be_visible()
        expect(details).to_contain_text("Perform initial loan assessment")
        expect(details).to_contain_text("RECOMMENDATION: APPROVE")

        card.get_by_label("Comment").fill(comment)
        waiting_png = shoot(page, tmp_path, "approval-waiting-list.png")

        card.get_by_role("button", name="Approve").click()
        page.wait_for_url(f"{api.url}/ui/runs/{run_id}")
        # The run page refreshes itself every 2 s until the run has finished.
        expect(page.locator("#status")).to_have_text(COMPLETED, timeout=FINISH_TIMEOUT_MS)
        expect(page.locator("meta[http-equiv=refresh]")).to_have_count(0)
        expect(page.get_by_role("heading", level=1)).to_have_text(ADA)
        result = page.locator("#result")
        expect(result).to_contain_text("approved")
        expect(result).to_contain_text(comment)
        expect(result).to_contain_text("web:alice")
        decided_row = page.locator("tr", has=page.locator("td", has_text=re.compile("^decided$")))
        expect(decided_row).to_have_count(1)
        expect(decided_row.locator("td").nth(3)).to_have_text("web:alice")
        finished_png = shoot(page, tmp_path, "approval-run-finished.png")

        # Back to the inbox: nothing is left waiting.
        page.get_by_role("link", name="Back to the approvals").click()
        page.wait_for_url(f"{api.url}/ui")
        expect(page.get_by_role("heading", level=1)).to_have_text("Waiting for you (0)")
        expect(page.get_by_text("Nothing is waiting for you.")).to_be_visible()
        assert dialogs == []

    assert waiting_png.stat().st_size > 0 and finished_png.stat().st_size > 0
    run = cluster.store.get_run(run_id)
    assert run.status == COMPLETED
    assert run.result["outcome"] == "approved"
    assert run.result["by"] == "web:alice" and run.result["comment"] == comment
    (decided,) = [e for e in cluster.store.events(run_id) if e.kind == "decided"]
    assert decided.actor == "web:alice"
    assert decided.data["decision"] == "approved" and decided.data["comment"] == comment
    (closed,) = [w for w in cluster.store.waits(run_id) if w.id == wait.id]
    assert closed.decided_by == "web:alice"
    assert closed.outcome["comment"] == comment and closed.outcome["approved"] is True


# --------------------------------------------------------------------------- 2. groups, log-in


def test_an_approver_sees_only_the_runs_of_their_groups(cluster: Cluster, tmp_path: Path) -> None:
    cluster.worker("w1")
    api = cluster.api()
    run_id = park(cluster, ADA)  # waits for an underwriter

    with chromium_page() as page:
        log_in(page, api.url, "key-mallory")  # an approver of "interns" only
        page.wait_for_url(f"{api.url}/ui")
        expect(page.locator("header")).to_contain_text("mallory")
        expect(page.get_by_role("heading", level=1)).to_have_text("Waiting for you (0)")
        expect(page.get_by_text("Nothing is waiting for you.")).to_be_visible()
        assert run_id not in page.content() and "Ada" not in page.inner_text("main")
        expect(page.locator("section[data-run]")).to_have_count(0)
        shoot(page, tmp_path, "approval-mallory-empty.png")

        # Log out: the session is gone, and the inbox sends her to log in again.
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{api.url}/ui/login")
        assert session_cookies(page) == []
        page.goto(f"{api.url}/ui")
        page.wait_for_url(f"{api.url}/ui/login")

        # The same run is there for an underwriter.
        log_in(page, api.url, "key-alice")
        page.wait_for_url(f"{api.url}/ui")
        expect(page.get_by_role("heading", level=1)).to_have_text("Waiting for you (1)")
        expect(page.locator(f'section[data-run="{run_id}"]')).to_have_count(1)

    assert cluster.store.get_run(run_id).status == WAITING


def test_a_wrong_key_shows_an_error_and_sets_no_session(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.api()
    with chromium_page() as page:
        log_in(page, api.url, "key-nobody")
        page.wait_for_url(re.compile(re.escape(f"{api.url}/ui/login") + r"\?error="))
        flash = page.locator(".flash")
        expect(flash).to_have_text("unknown API key")
        expect(page.get_by_label("Your API key")).to_be_visible()  # can try again
        assert session_cookies(page) == []
        shoot(page, tmp_path, "approval-login-error.png")
        page.goto(f"{api.url}/ui")
        page.wait_for_url(f"{api.url}/ui/login")

        # A forged cookie is no session either.
        page.context.add_cookies(
            [{"name": COOKIE, "value": "alice.9999999999.0000", "url": f"{api.url}/ui"}]
        )
        page.goto(f"{api.url}/ui")
        page.wait_for_url(f"{api.url}/ui/login")


def test_an_approver_of_another_group_cannot_decide_from_the_page(cluster: Cluster) -> None:
    cluster.worker("w1")
    api = cluster.api()
    theirs = park(cluster, ADA)  # underwriters
    mine = park(cluster, BOB, approver_group="interns")

    with chromium_page() as page:
        log_in(page, api.url, "key-mallory")
        page.wait_for_url(f"{api.url}/ui")
        expect(page.get_by_role("heading", level=1)).to_have_text("Waiting for you (1)")
        expect(page.locator(f'section[data-run="{mine}"]')).to_have_count(1)
        # Point her own (valid) form at the underwriters' run and press Approve.
        form = page.locator(f'section[data-run="{mine}"] form')
        form.evaluate("(f, id) => { f.action = `/ui/runs/${id}/decide`; }", theirs)
        form.get_by_role("button", name="Approve").click()
        page.wait_for_url(re.compile(re.escape(f"{api.url}/ui") + r"\?flash="))
        expect(page.get_by_role("status")).to_contain_text(
            f"web:mallory may not decide run {theirs}"
        )

    assert cluster.store.get_run(theirs).status == WAITING
    assert cluster.store.get_run(mine).status == WAITING
    assert not [e for e in cluster.store.events(theirs) if e.kind == "decided"]


def test_a_refused_decision_says_which_group_it_waits_for(cluster: Cluster) -> None:
    cluster.worker("w1")
    api = cluster.api()
    theirs = park(cluster, ADA)
    mine = park(cluster, BOB, approver_group="interns")
    with chromium_page() as page:
        log_in(page, api.url, "key-mallory")
        page.wait_for_url(f"{api.url}/ui")
        form = page.locator(f'section[data-run="{mine}"] form')
        form.evaluate("(f, id) => { f.action = `/ui/runs/${id}/decide`; }", theirs)
        form.get_by_role("button", name="Approve").click()
        page.wait_for_url(re.compile(re.escape(f"{api.url}/ui") + r"\?flash="))
        expect(page.get_by_role("status")).to_have_text(
            f"web:mallory may not decide run {theirs}: it waits for an approver of group "
            "'underwriters'",
            timeout=2_000,
        )


def luminance(css_rgb: str) -> float:
    """WCAG relative luminance of an opaque ``rgb(r, g, b)`` computed colour."""
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css_rgb)[:3])

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def contrast(fg: str, bg: str) -> float:
    high, low = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_log_out_button_is_readable(cluster: Cluster) -> None:
    api = cluster.api()
    with chromium_page() as page:
        log_in(page, api.url, "key-alice")
        page.wait_for_url(f"{api.url}/ui")
        button = page.get_by_role("button", name="Log out")
        expect(button).to_be_visible()
        fg, bg = button.evaluate(
            "b => { const s = getComputedStyle(b); return [s.color, s.backgroundColor]; }"
        )
        assert not bg.startswith("rgba(0, 0, 0, 0"), "the button paints its own background"
        assert contrast(fg, bg) >= 4.5, (fg, bg, round(contrast(fg, bg), 2))


# --------------------------------------------------------------------------- 3. escaping

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
HOSTILE = f"Loan application from {SCRIPT} {IMG}: amount 20000, income 90000, debt 3000"


def no_markup_in_main(page: Page) -> None:
    assert page.locator("main script").count() == 0
    assert page.locator("main img").count() == 0
    assert page.locator("img[onerror]").count() == 0


def test_a_hostile_task_and_comment_are_shown_as_text(cluster: Cluster, tmp_path: Path) -> None:
    cluster.worker("w1")
    api = cluster.api()
    run_id = park(cluster, HOSTILE)
    comment = "<script>alert(3)</script><b>bold</b> & <i>done</i>"

    with chromium_page() as page:
        dialogs = watch_dialogs(page)
        log_in(page, api.url, "key-alice")
        page.wait_for_url(f"{api.url}/ui")
        card = page.locator(f'section[data-run="{run_id}"]')
        expect(card.get_by_role("heading", level=2)).to_have_text(HOSTILE)
        card.locator("details summary").click()
        main = page.inner_text("main")
        assert SCRIPT in main and IMG in main
        assert main.count(SCRIPT) >= 3  # title, prompt, conversation
        no_markup_in_main(page)
        shoot(page, tmp_path, "approval-escaped-task.png")

        card.get_by_label("Comment").fill(comment)
        card.get_by_role("button", name="Approve").click()
        page.wait_for_url(f"{api.url}/ui/runs/{run_id}")
        expect(page.locator("#status")).to_have_text(COMPLETED, timeout=FINISH_TIMEOUT_MS)
        expect(page.get_by_role("heading", level=1)).to_have_text(HOSTILE)
        expect(page.locator("#result")).to_contain_text(comment)
        assert page.locator("main b, main i").count() == 0
        no_markup_in_main(page)

        # A message crafted into the log-in page's query string is not shown at all (only
        # the server's own, signed ones are), let alone run.
        page.goto(f"{api.url}/ui/login?error=%3Cscript%3Ealert(4)%3C/script%3E")
        expect(page.locator(".flash")).to_have_count(0)
        assert page.locator("main script").count() == 0
        page.wait_for_timeout(300)
        assert dialogs == []

    assert cluster.store.get_run(run_id).result["comment"] == comment


# --------------------------------------------------------------------------- 4. CSRF


class _HostileSite(BaseHTTPRequestHandler):
    """A page elsewhere that, once opened, posts an Approve to the run in ``target``."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><html><head><meta charset="utf-8"><title>Win a prize</title>
</head><body><form id="f" method="post" action="{self.target}">
<input type="hidden" name="decision" value="approve">
<input type="hidden" name="comment" value="forged"></form>
<script>document.getElementById("f").submit()</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def hostile_site(target: str) -> Iterator[int]:
    handler = type("Handler", (_HostileSite,), {"target": target})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, name="hostile-http", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_a_decision_without_the_sessions_csrf_token_changes_nothing(cluster: Cluster) -> None:
    from pausepoint.worker.auth import Keyring, Principal

    cluster.worker("w1")
    api = cluster.api()
    run_id = park(cluster, ADA)
    decide = f"{api.url}/ui/runs/{run_id}/decide"
    # A well-formed token, but of another session (mallory's): it must not pass for alice's.
    keyring = Keyring([], cluster.runtime.secret)
    mallory = Principal("mallory", frozenset({"approver"}), frozenset({"interns"}))
    other = keyring.csrf_token(keyring.session_for(mallory))

    with chromium_page() as page:
        log_in(page, api.url, "key-alice")
        page.wait_for_url(f"{api.url}/ui")
        token = csrf_of(page, run_id)
        assert token != other
        forged: list[dict[str, str | float | bool]] = [
            {"decision": "approve", "comment": "no csrf"},
            {"decision": "approve", "comment": "empty csrf", "csrf": ""},
            {"decision": "approve", "comment": "zero csrf", "csrf": "0" * len(token)},
            {"decision": "approve", "comment": "cut csrf", "csrf": token[:-1]},
            {"decision": "approve", "comment": "other session's csrf", "csrf": other},
        ]
        for fields in forged:
            response = page.request.post(decide, form=fields)  # with alice's session cookie
            assert response.ok, fields
            # Refused as a stale form, not as a missing session: the cookie did go along.
            assert "/ui/login" not in response.url, fields
            assert "the form expired" in response.text(), fields
            assert cluster.store.get_run(run_id).status == WAITING, fields

        # A page on another port of 127.0.0.1 (the same site: SameSite does not help here)
        # submits a form to the decide URL in alice's browser.
        with hostile_site(decide) as port:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_url(re.compile(re.escape(f"{api.url}/ui")))
            expect(page.get_by_role("status")).to_contain_text("the form expired")
        # And from another site (localhost): the Strict cookie stays home.
        with hostile_site(decide) as port:
            page.goto(f"http://localhost:{port}/")
            page.wait_for_url(f"{api.url}/ui/login")
        assert cluster.store.get_run(run_id).status == WAITING
        assert not [e for e in cluster.store.events(run_id) if e.kind == "decided"]

        # The same request with the page's own token is accepted: only the token was wrong.
        response = page.request.post(
            decide, form={"decision": "reject", "comment": "with csrf", "csrf": token}
        )
        assert response.ok and response.url == f"{api.url}/ui/runs/{run_id}"

    (decided,) = [e for e in cluster.store.events(run_id) if e.kind == "decided"]
    assert decided.actor == "web:alice" and decided.data["comment"] == "with csrf"
