"""Digests of what a transition wrote, carried by its event, so the trail binds state.

A transition's last event gets ``data["digests"]``: for the checkpoint it wrote
``"checkpoint": [seq, d]``, for the messages it appended ``"messages": [first, count, d]``,
for each wait it opened, changed or closed ``"waits": [[seq, kind, d], ...]``, and when it
ended the run ``"run": d`` (status, result, error, latest checkpoint). Each ``d`` is a
128-bit HMAC under the audit key (SHA-256 without one) of the rows' canonical JSON, as
base64url. Verification recomputes them from the stored rows (:mod:`persistence.trail`),
so an edit to a checkpoint's state, a message, a decision or a result is found and
named, and a row no event wrote is found too.

Values are put in one canonical form first (aware datetimes as UTC ISO text with
microseconds, Float columns as floats), so what was written and what is read back from
either database digest the same.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

from pausepoint.persistence.audit import canonical
from pausepoint.persistence.audit_keys import AuditKeys

DIGEST_BYTES = 16
# What of each row a digest covers (every column but the row's own surrogate id).
CHECKPOINT_FIELDS = ("seq", "step", "state", "history_len", "segments")
MESSAGE_FIELDS = ("idx", "role", "content", "data")
WAIT_FIELDS = (
    "seq",
    "kind",
    "status",
    "resume_step",
    "approver_group",
    "prompt",
    "deadline",
    "on_timeout",
    "default_outcome",
    "escalate_to",
    "escalate_after",
    "source",
    "event_name",
    "match_key",
    "resource",
    "token_hash",
    "outcome",
    "decided_by",
    "decided_at",
    "created_at",
)
FLOAT_FIELDS = frozenset({"escalate_after"})
RUN_FIELDS = ("status", "result", "error", "seq")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return value


def _pick(row: Mapping[Any, Any], fields: Sequence[str]) -> dict[str, Any]:
    if fields is CHECKPOINT_FIELDS or fields is MESSAGE_FIELDS:
        # No times or floats in these: the fast path (verification digests every row).
        return {f: row.get(f) for f in fields}
    out = {}
    for f in fields:
        value = row.get(f)
        if f in FLOAT_FIELDS and value is not None:
            value = float(value)
        out[f] = _plain(value)
    return out


def _encode(value: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace), fast; what orjson cannot encode
    (an integer beyond 64 bits) the standard library does, on write and verify alike."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return canonical(value).encode()


def digest(keys: AuditKeys, what: str, value: Any, key_id: str | None = None) -> str:
    """The digest of ``value`` (tagged ``what``), under the signing key or ``key_id``'s."""
    message = b"pausepoint " + what.encode() + b"\n" + _encode(value)
    mac = keys.mac(message) if key_id is None else keys.mac_with(key_id, message)
    return base64.urlsafe_b64encode(mac[:DIGEST_BYTES]).rstrip(b"=").decode()


def checkpoint_digest(keys: AuditKeys, row: Mapping[Any, Any], key_id: str | None = None) -> str:
    return digest(keys, "checkpoint", _pick(row, CHECKPOINT_FIELDS), key_id)


def messages_digest(
    keys: AuditKeys, rows: Sequence[Mapping[Any, Any]], key_id: str | None = None
) -> str:
    return digest(keys, "messages", [_pick(r, MESSAGE_FIELDS) for r in rows], key_id)


def wait_digest(keys: AuditKeys, row: Mapping[Any, Any], key_id: str | None = None) -> str:
    return digest(keys, "wait", _pick(row, WAIT_FIELDS), key_id)


def run_digest(keys: AuditKeys, row: Mapping[Any, Any], key_id: str | None = None) -> str:
    return digest(keys, "run", _pick(row, RUN_FIELDS), key_id)
