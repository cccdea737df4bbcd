"""Callback tokens and webhook signatures.

A callback token is ``{run_id}.{seq}.{source}.{mac}``: the run, the checkpoint its
wait is opened at, the source whose secret may sign the callback, and a 256-bit
HMAC-SHA256 of those under the store's random 256-bit secret. So a token

- cannot be guessed or forged without the secret (256 bits of keyed MAC),
- is stored only as its SHA-256 (``waits.token_hash``), and single-use by the
  wait's ``pending -> fulfilled`` compare-and-swap,
- is the same on every attempt of the step that hands it out, so a retried step
  gives the external system the same URL, and a callback that arrives before the
  step has committed its wait can be recognised, kept, and delivered at park time.

Webhook signatures: ``X-Pausepoint-Signature: sha256=<hex>`` over
``f"{timestamp}.{body}"`` with the source's shared secret, and
``X-Pausepoint-Timestamp`` within five minutes. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass

SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
NO_SOURCE = "-"
SIGNATURE_TOLERANCE = 300.0


@dataclass(frozen=True)
class CallbackToken:
    run_id: str
    seq: int
    source: str | None
    token: str

    @property
    def hash(self) -> str:
        return token_hash(self.token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _mac(secret: bytes, run_id: str, seq: int, source: str) -> str:
    return hmac.new(
        secret, f"callback:{run_id}:{seq}:{source}".encode(), hashlib.sha256
    ).hexdigest()


def make_token(secret: bytes, run_id: str, seq: int, source: str | None) -> CallbackToken:
    src = source or NO_SOURCE
    if src != NO_SOURCE and not SOURCE_RE.match(src):
        raise ValueError(f"bad callback source {source!r}: lowercase letters, digits, - and _")
    token = f"{run_id}.{seq}.{src}.{_mac(secret, run_id, seq, src)}"
    return CallbackToken(run_id, seq, source, token)


def parse_token(secret: bytes, token: str) -> CallbackToken | None:
    """The token's parts if its MAC checks out; ``None`` for anything else."""
    parts = token.split(".")
    if len(parts) != 4 or len(token) > 200:
        return None
    run_id, seq_text, src, mac = parts
    if not token.isascii():  # "٣" is a digit to str.isdigit; no token of ours has one
        return None
    if not (len(run_id) == 32 and seq_text.isdigit() and len(mac) == 64):
        return None
    if src != NO_SOURCE and not SOURCE_RE.match(src):
        return None
    seq = int(seq_text)
    if not hmac.compare_digest(mac, _mac(secret, run_id, seq, src)):
        return None
    return CallbackToken(run_id, seq, None if src == NO_SOURCE else src, token)


def sign(secret: str, timestamp: str, body: bytes, token: str) -> str:
    """``sha256=<hex HMAC-SHA256 of "timestamp.token.body">``: bound to the callback's
    token, so a captured signed request cannot resume another run of the same source."""
    message = timestamp.encode() + b"." + token.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance: float = SIGNATURE_TOLERANCE,
    *,
    token: str,
) -> str | None:
    """``None`` when the signature is good, else what is wrong with it."""
    if not timestamp or not signature:
        return "missing X-Pausepoint-Timestamp or X-Pausepoint-Signature"
    try:
        sent = float(timestamp)
    except ValueError:
        return "X-Pausepoint-Timestamp is not a Unix time"
    if not math.isfinite(sent):  # abs(now - nan) > tolerance is False
        return "X-Pausepoint-Timestamp is not a Unix time"
    if abs(now - sent) > tolerance:
        return f"timestamp is more than {tolerance:.0f} s away from now"
    expected = sign(secret, timestamp, body, token).encode()
    if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), expected):
        return "signature does not match"
    return None
