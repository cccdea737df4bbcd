"""The audit key: what the trail is keyed with, held outside the database.

Every event hash, ledger entry and anchor is an HMAC-SHA256 under the current key;
without a key they are plain SHA-256, which proves a trail intact only against
whoever cannot write the store (anyone who can could recompute it).

Keys come from ``PAUSEPOINT_AUDIT_KEY`` (one or more, comma-separated) or
``PAUSEPOINT_AUDIT_KEY_FILE`` (one a line; ``#`` starts a comment), never from the
store. The first key signs; every key verifies, so after a rotation (put the new key
first and keep the old ones after it) old trails still verify. Nothing records which
key made a hash: verification tries each key, so no row grows. A key's id (the first
8 hex digits of a hash of it) names it in reports without revealing it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pausepoint.persistence.errors import InvalidInput

ENV_KEY = "PAUSEPOINT_AUDIT_KEY"
ENV_KEY_FILE = "PAUSEPOINT_AUDIT_KEY_FILE"
MIN_KEY_BYTES = 16
# The "key id" of a plain SHA-256 (no key).
UNKEYED = ""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"pausepoint audit key id\n" + key).hexdigest()[:8]


def new_key() -> str:
    """A fresh random key, as text (what ``pausepoint audit keygen`` prints)."""
    return secrets.token_hex(32)


def _parse(text: str, where: str) -> list[bytes]:
    keys = []
    for raw in text.replace(",", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key = line.encode()
        if len(key) < MIN_KEY_BYTES:
            raise InvalidInput(
                f"an audit key in {where} is {len(key)} characters; give at least "
                f"{MIN_KEY_BYTES} (`pausepoint audit keygen` makes one)"
            )
        keys.append(key)
    return keys


@dataclass(frozen=True)
class AuditKeys:
    """The signing key (first) and the keys that still verify (all of them)."""

    keys: tuple[bytes, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuditKeys:
        env = os.environ if environ is None else environ
        keys: list[bytes] = []
        if env.get(ENV_KEY):
            keys += _parse(env[ENV_KEY], ENV_KEY)
        if env.get(ENV_KEY_FILE):
            keys += cls.from_file(Path(env[ENV_KEY_FILE])).keys
        return cls(tuple(dict.fromkeys(keys)))

    @classmethod
    def from_file(cls, path: Path) -> AuditKeys:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot read the audit key file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InvalidInput(f"the audit key file {path} is not text") from None
        keys = _parse(text, str(path))
        if not keys:
            raise InvalidInput(f"the audit key file {path} holds no key")
        return cls(tuple(keys))

    @classmethod
    def of(cls, *keys: str | bytes) -> AuditKeys:
        return cls(tuple(k.encode() if isinstance(k, str) else k for k in keys))

    @functools.cached_property
    def _by_id(self) -> dict[str, bytes]:
        return {key_id(k): k for k in self.keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"AuditKeys({', '.join(self.ids) or 'none'})"

    @property
    def ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    @property
    def signing_id(self) -> str:
        return key_id(self.keys[0]) if self.keys else UNKEYED

    def mac(self, message: bytes) -> bytes:
        """What the store writes: HMAC-SHA256 under the signing key (SHA-256 without)."""
        if self.keys:
            return hmac.digest(self.keys[0], message, "sha256")
        return hashlib.sha256(message).digest()

    def mac_with(self, kid: str, message: bytes) -> bytes:
        """The MAC under the key with id ``kid`` (``UNKEYED``: plain SHA-256)."""
        if kid == UNKEYED:
            return hashlib.sha256(message).digest()
        key = self._by_id.get(kid)
        if key is None:
            raise KeyError(kid)
        return hmac.digest(key, message, "sha256")

    def candidates(self) -> Sequence[tuple[str, bytes | None]]:
        """``(key id, key)`` to try when verifying, signing key first, unkeyed last."""
        return [*((key_id(k), k) for k in self.keys), (UNKEYED, None)]

    def which(self, message: bytes, digest: bytes, hint: str | None = None) -> str | None:
        """The id of the key that made ``digest`` over ``message`` (``UNKEYED`` for plain
        SHA-256), or None when none did. ``hint``: the id to try first. A ``digest``
        shorter than 32 bytes is compared with that many leading bytes of the MAC."""
        if not 0 < len(digest) <= 32:
            return None
        tries = self.candidates()
        if hint is not None:
            tries = sorted(tries, key=lambda t: t[0] != hint)
        for kid, key in tries:
            made = (
                hashlib.sha256(message).digest()
                if key is None
                else hmac.digest(key, message, "sha256")
            )
            if hmac.compare_digest(made[: len(digest)], digest):
                return kid
        return None
