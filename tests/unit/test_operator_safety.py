"""What an operator's install shows and opens: masked URLs, a Flower that needs a login,
broker errors that name the extra to install, and a compose file that publishes nothing
to the world by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pausepoint.persistence.errors import ConfigurationError
from pausepoint.persistence.urls import mask_url
from pausepoint.worker.app import check_broker_url
from pausepoint.worker.flower import basic_auth, flower_argv
from pausepoint.worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:pw-1@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgresql+psycopg://app:p%40ss@db/x?sslmode=require", None),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://guest:guest@mq:5672//", "amqp://guest:***@mq:5672//"),
        ("https://sk-live-123@llm.example/v1", "https://***@llm.example/v1"),
        (
            "https://llm.example/v1?api_key=sk-9&model=m",
            "https://llm.example/v1?api_key=***&model=m",
        ),
        ("sqlite:////var/lib/pp/store.db", "sqlite:////var/lib/pp/store.db"),
        ("sqla+sqlite:///broker.db", "sqla+sqlite:///broker.db"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("http://u:pw-2@[::1", "http://***@[::1"),
    ],
)
def test_mask_url_hides_credentials_and_keeps_the_rest(url: str, shown: str | None) -> None:
    masked = mask_url(url)
    assert masked is not None
    if shown is not None:
        assert masked == shown
    for secret in ("pw-1", "p%40ss", "hunter2", ":guest@", "sk-live", "sk-9", "pw-2"):
        assert secret not in masked


def test_settings_repr_and_str_mask_every_url() -> None:
    s = Settings(
        store_url="postgresql://app:store-pw@db/x",
        broker_url="redis://:broker-pw@cache:6379/0",
        llm_base_url="https://llm-token@llm.example/v1",
        public_url="https://hook:public-pw@example.com",
        llm_api_key="key-pw",
        secret_key="ab" * 16,
    )
    for text in (repr(s), str(s), repr({"conf": s})):
        for secret in ("store-pw", "broker-pw", "llm-token", "public-pw", "key-pw", "abab"):
            assert secret not in text, text
        assert "postgresql://app:***@db/x" in text
    # The values themselves are untouched: only what is shown is masked.
    assert s.store_url == "postgresql://app:store-pw@db/x"


def test_flower_refuses_to_start_without_a_login() -> None:
    s = Settings(broker_url="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match="FLOWER_BASIC_AUTH"):
        flower_argv(s, {}, "127.0.0.1", 5555)
    with pytest.raises(ConfigurationError, match="FLOWER_BASIC_AUTH"):
        flower_argv(s, {"FLOWER_UNAUTHENTICATED_API": "true"}, "127.0.0.1", 5555)
    for bad in ("admin", "admin:", ":pw", "a:b,nopass", "  "):
        with pytest.raises(ConfigurationError):
            basic_auth({"FLOWER_BASIC_AUTH": bad})
    assert basic_auth({"FLOWER_BASIC_AUTH": "a:b, c:d"}) == ["a:b", "c:d"]
    argv = flower_argv(s, {"FLOWER_BASIC_AUTH": "a:secret"}, "127.0.0.1", 5555)
    assert "--address=127.0.0.1" in argv and "--unauthenticated_api=False" in argv
    assert not any("secret" in a for a in argv)  # the login never goes on a command line


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PAUSEPOINT_", "FLOWER_"))}
    return subprocess.run(
        [sys.executable, "-m", "pausepoint.worker", *args],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pausepoint_flower_without_a_login_exits_with_a_message() -> None:
    proc = _cli(
        "flower",
        PAUSEPOINT_BROKER_URL="redis://127.0.0.1:6379/0",
        FLOWER_UNAUTHENTICATED_API="true",
    )
    assert proc.returncode == 1, proc
    assert "FLOWER_BASIC_AUTH" in proc.stderr and "Traceback" not in proc.stderr


def test_pausepoint_flower_on_the_embedded_broker_says_why_not(tmp_path: Path) -> None:
    proc = _cli(
        "flower",
        PAUSEPOINT_BROKER_URL=f"sqla+sqlite:///{tmp_path / 'b.db'}",
        FLOWER_BASIC_AUTH="a:b",
    )
    assert proc.returncode == 1, proc
    assert "Redis or RabbitMQ" in proc.stderr and "Traceback" not in proc.stderr


# (py-amqp, RabbitMQ's client, is a dependency of kombu itself: it cannot be missing.)
@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis", "redis"),
        ("rediss://:pw@127.0.0.1:6379/0", "packaging", "redis"),
    ],
)
def test_a_broker_whose_library_is_missing_names_the_extra(
    url: str, module: str, extra: str
) -> None:
    # A child process in which a library the transport needs cannot be imported, as
    # after an install without the extra.
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from worker.app import check_broker_url\n"
        f"check_broker_url({url!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert f"pip install 'pausepoint[{extra}]'" in proc.stderr
    assert "unusable broker URL" not in proc.stderr  # the install's fault, not the URL's
    assert ":pw@" not in proc.stderr


def test_an_unknown_broker_scheme_blames_the_url_with_credentials_masked() -> None:
    with pytest.raises(ConfigurationError) as info:
        check_broker_url("nosuch://user:pw-3@host/0")
    assert "unusable broker URL" in str(info.value) and "pw-3" not in str(info.value)


def test_compose_starts_flower_behind_a_login_on_loopback() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    flower = compose["services"]["flower"]
    assert flower["command"][:2] == ["pausepoint", "flower"]
    env = flower["environment"]
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert env["FLOWER_BASIC_AUTH"] is None  # passed through from the host, no default
    for port in flower["ports"]:
        assert str(port).startswith("${FLOWER_BIND:-127.0.0.1}:"), port
    for name, service in compose["services"].items():
        text = str(service.get("environment", {}))
        assert "UNAUTHENTICATED" not in text, name


def test_the_llm_client_shows_its_url_with_the_same_masking() -> None:
    from pausepoint.tasks.llm import OpenAIBackend

    backend = OpenAIBackend(
        base_url="https://user:llm-pw@llm.example/v1?api_key=llm-key", model="m"
    )
    try:
        shown = repr(backend)
        assert "llm-pw" not in shown and "llm-key" not in shown
        assert "https://user:***@llm.example/v1" in shown
    finally:
        backend.close()
