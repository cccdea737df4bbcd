"""Callback tokens, webhook signatures, API keys and browser sessions."""

from __future__ import annotations

import secrets

import pytest
from pydantic import SecretStr

from pausepoint.persistence.errors import Forbidden, Unauthorized
from pausepoint.tasks.tokens import make_token, parse_token, sign, token_hash, verify_signature
from pausepoint.worker.auth import Keyring
from pausepoint.worker.settings import ApiKey, Settings

SECRET = secrets.token_bytes(32)
RUN = "0123456789abcdef0123456789abcdef"


def test_tokens_round_trip_and_carry_256_bits_of_mac() -> None:
    t = make_token(SECRET, RUN, 3, "payments")
    assert parse_token(SECRET, t.token) == t
    mac = t.token.rsplit(".", 1)[1]
    assert len(bytes.fromhex(mac)) * 8 == 256
    assert t.hash == token_hash(t.token) and t.token not in t.hash
    # Stable across attempts of the same step, different for anything else.
    assert make_token(SECRET, RUN, 3, "payments").token == t.token
    assert make_token(SECRET, RUN, 4, "payments").token != t.token
    assert make_token(secrets.token_bytes(32), RUN, 3, "payments").token != t.token
    assert make_token(SECRET, RUN, 3, None).source is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # one bit of the MAC
        lambda t: t.replace(".3.", ".4."),  # another checkpoint
        lambda t: t.replace("payments", "refunds"),  # another source
        lambda t: "f" + t[1:],  # another run
        lambda t: t + ".x",
        lambda t: "",
        lambda t: "a.b.c.d",
    ],
)
def test_a_forged_or_mangled_token_is_unknown(mangle: object) -> None:
    t = make_token(SECRET, RUN, 3, "payments").token
    assert parse_token(SECRET, mangle(t)) is None  # type: ignore[operator]


def test_bad_sources_are_refused() -> None:
    with pytest.raises(ValueError):
        make_token(SECRET, RUN, 1, "Bad Source")


TOKEN = "run.1.payments.mac"


def test_signatures_check_secret_body_and_time() -> None:
    body = b'{"paid": true}'
    ts = "1700000000"
    good = sign("s3cret", ts, body, TOKEN)
    assert verify_signature("s3cret", ts, good, body, now=1700000100, token=TOKEN) is None
    assert (
        verify_signature("other", ts, good, body, now=1700000100, token=TOKEN)
        == "signature does not match"
    )
    assert (
        verify_signature("s3cret", ts, good, body + b" ", now=1700000100, token=TOKEN) is not None
    )
    assert "timestamp" in (
        verify_signature("s3cret", ts, good, body, now=1700000301, token=TOKEN) or ""
    )
    assert "timestamp" in (
        verify_signature("s3cret", ts, good, body, now=1699999699, token=TOKEN) or ""
    )
    assert "missing" in (
        verify_signature("s3cret", None, good, body, now=1700000000, token=TOKEN) or ""
    )
    assert "Unix time" in (
        verify_signature("s3cret", "yesterday", good, body, now=0, token=TOKEN) or ""
    )


def keyring() -> Keyring:
    keys = [
        ApiKey(name="alice", key=SecretStr("k-alice"), roles=["approver"], groups=["u"]),
        ApiKey(name="ops", key=SecretStr("k-ops"), roles=["admin"]),
        ApiKey(name="bot", key=SecretStr("k-bot"), roles=["producer"]),
    ]
    return Keyring(keys, SECRET)


def test_a_signature_is_bound_to_its_callback_token() -> None:
    body = b'{"paid": true}'
    good = sign("s3cret", "1700000000", body, TOKEN)
    other = verify_signature("s3cret", "1700000000", good, body, now=1700000000, token="x.2.p.m")
    assert other == "signature does not match"


def test_keys_roles_and_groups() -> None:
    ring = keyring()
    alice = ring.authenticate("k-alice")
    assert alice.name == "alice" and alice.approver_groups() == frozenset({"u"})
    assert ring.authenticate("k-ops").approver_groups() is None  # admins decide for any group
    with pytest.raises(Forbidden):
        ring.authenticate("k-bot").approver_groups()
    with pytest.raises(Forbidden):
        alice.require("producer")
    ring.authenticate("k-ops").require("producer")
    for bad in ("", None, "k-alic", "k-alice ", "K-ALICE"):
        with pytest.raises(Unauthorized):
            ring.authenticate(bad)
    with pytest.raises(Unauthorized, match="PAUSEPOINT_API_KEYS"):
        Keyring([], SECRET).authenticate("anything")


def test_sessions_are_signed_and_expire() -> None:
    ring = keyring()
    alice = ring.authenticate("k-alice")
    cookie = ring.session_for(alice, now=1000)
    assert "k-alice" not in cookie
    assert ring.from_session(cookie, now=2000).name == "alice"
    with pytest.raises(Unauthorized, match="expired"):
        ring.from_session(cookie, now=1000 + 9 * 3600)
    forged = cookie.replace("alice", "ops", 1)
    with pytest.raises(Unauthorized):
        ring.from_session(forged, now=2000)
    ring.check_csrf(cookie, ring.csrf_token(cookie))
    with pytest.raises(Forbidden):
        ring.check_csrf(cookie, "nope")


def test_settings_parse_keys_resources_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PAUSEPOINT_API_KEYS",
        '[{"name": "a", "key": "sk-distinctive-value", "roles": ["approver"], "groups": ["g"]}]',
    )
    monkeypatch.setenv("PAUSEPOINT_RESOURCES", "llm-quota=5, gpu=2")
    monkeypatch.setenv("PAUSEPOINT_CALLBACK_SECRETS", '{"payments": "x"}')
    monkeypatch.setenv("PAUSEPOINT_SECRET_KEY", "ab" * 32)
    s = Settings()
    assert (
        s.api_keys[0].groups == ["g"]
        and s.api_keys[0].key.get_secret_value() == "sk-distinctive-value"
    )
    assert s.resources == {"llm-quota": 5, "gpu": 2}
    assert s.callback_secrets["payments"].get_secret_value() == "x"
    assert s.secret_bytes() == bytes.fromhex("ab" * 32)
    assert "sk-distinctive-value" not in repr(s.api_keys)
    monkeypatch.setenv("PAUSEPOINT_RESOURCES", "gpu")
    with pytest.raises(ValueError, match="name=slots"):
        Settings()
