"""Who is calling: API keys with roles and approver groups, and browser sessions.

Keys come from settings (``PAUSEPOINT_API_KEYS``). A key is compared by its
SHA-256 in constant time, so neither its length nor its prefix leaks through
timing. The approval page keeps a signed, expiring session cookie that names
the key, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from pausepoint.persistence.errors import Forbidden, Unauthorized
from pausepoint.worker.settings import ApiKey

SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]
    groups: frozenset[str]

    @property
    def actor(self) -> str:
        return f"api:{self.name}"

    def require(self, *roles: str) -> None:
        if "admin" in self.roles or self.roles.intersection(roles):
            return
        raise Forbidden(f"key {self.name!r} needs one of the roles: {', '.join(roles)}")

    def approver_groups(self) -> frozenset[str] | None:
        """The groups this key may decide for; ``None`` means any (admins)."""
        if "admin" in self.roles:
            return None
        if "approver" not in self.roles:
            raise Forbidden(f"key {self.name!r} is not an approver")
        return self.groups


def _same(given: str, expected: str) -> bool:
    """Constant-time, and any text (``compare_digest`` refuses non-ASCII ``str``)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class Keyring:
    def __init__(self, keys: list[ApiKey], secret: bytes) -> None:
        self._keys = [(_digest(k.key.get_secret_value()), k) for k in keys]
        self._by_name = {k.name: k for k in keys}
        self._secret = secret

    def __bool__(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str | None) -> Principal:
        if not self._keys:
            raise Unauthorized("this API has no keys configured; set PAUSEPOINT_API_KEYS")
        if not presented:
            raise Unauthorized("send an API key: Authorization: Bearer <key>")
        given = _digest(presented)
        found = None
        for digest, key in self._keys:
            # No early exit: every key is compared, found or not.
            if hmac.compare_digest(digest, given):
                found = key
        if found is None:
            raise Unauthorized("unknown API key")
        return _principal(found)

    # Sessions for the approval page: "name.expiry.kid.mac", kid naming the key's secret,
    # so a session ends when its key is rotated or removed.
    def session_for(self, principal: Principal, now: float | None = None) -> str:
        expiry = int((now or time.time()) + SESSION_SECONDS)
        key = self._by_name.get(principal.name)
        kid = _kid(key) if key is not None else "-"
        body = f"{principal.name}.{expiry}.{kid}"
        return f"{body}.{self._mac('session:' + body)}"

    def from_session(self, cookie: str | None, now: float | None = None) -> Principal:
        if not cookie or cookie.count(".") < 3:
            raise Unauthorized("log in with your API key")
        body, _, mac = cookie.rpartition(".")
        rest, _, kid = body.rpartition(".")
        name, _, expiry = rest.rpartition(".")
        if not _same(mac, self._mac("session:" + body)):
            raise Unauthorized("log in with your API key")
        if not (expiry.isascii() and expiry.isdigit()) or int(expiry) < (now or time.time()):
            raise Unauthorized("your session expired; log in again")
        key = self._by_name.get(name)
        if key is None or not _same(kid, _kid(key)):
            raise Unauthorized("this key is no longer configured; log in again")
        return _principal(key)

    def csrf_token(self, cookie: str) -> str:
        return self._mac("csrf:" + cookie)

    def check_csrf(self, cookie: str, token: str) -> None:
        if not _same(self.csrf_token(cookie), token or ""):
            raise Forbidden("the form expired; reload the page")

    def note_mac(self, text: str) -> str:
        """The MAC a page's message carries in its URL: only messages this server wrote
        are shown (a crafted ``?flash=Call this number`` is not)."""
        return self._mac("note:" + text)[:32]

    def note_ok(self, text: str, mac: str) -> bool:
        return _same(mac, self.note_mac(text))

    def _mac(self, message: str) -> str:
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()


def _kid(key: ApiKey) -> str:
    """A short, one-way name of a key's secret."""
    return _digest(key.key.get_secret_value()).hex()[:16]


def _principal(key: ApiKey) -> Principal:
    return Principal(key.name, frozenset(key.roles), frozenset(key.groups))
