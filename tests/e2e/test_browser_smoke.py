"""The browser-test infrastructure end to end: Debian's Chromium fills and posts a form."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from tests.e2e.browser import chromium_page

FORM_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Greeting</title></head>
<body>
  <h1>Who are you?</h1>
  <form method="post" action="/greet">
    <label for="name">Name</label>
    <input id="name" name="name" type="text">
    <button type="submit">Send</button>
  </form>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self._reply(FORM_PAGE)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        fields = parse_qs(self.rfile.read(length).decode())
        name = html.escape(fields.get("name", [""])[0])
        body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Hello</title></head>
<body><p id="greeting">Hello, {name}!</p></body></html>
"""
        self._reply(body.encode())

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve() -> Iterator[str]:
    """A tiny server-rendered site on 127.0.0.1, shut down and joined afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = False  # server_close() then joins the request threads
    thread = threading.Thread(target=server.serve_forever, name="smoke-http", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_chromium_fills_and_posts_a_form(tmp_path: Path) -> None:
    with serve() as url, chromium_page() as page:
        page.goto(url + "/")
        assert page.title() == "Greeting"
        page.fill("#name", "Ada")
        page.click("button[type=submit]")
        page.wait_for_url(url + "/greet")
        assert page.title() == "Hello"
        assert page.inner_text("#greeting") == "Hello, Ada!"

        shot = tmp_path / "greeting.png"
        page.screenshot(path=str(shot))
        assert shot.is_file()
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 100
