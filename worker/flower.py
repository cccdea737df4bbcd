"""Flower, started the one safe way: behind basic auth, on loopback unless told otherwise.

Flower's HTTP API can revoke tasks and shrink worker pools, and its pages show each
worker's configuration. ``pausepoint flower`` refuses to start without
``FLOWER_BASIC_AUTH`` (``user:password``, comma-separated for several) and never with
Flower's unauthenticated API, whatever the environment says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pausepoint.persistence.errors import ConfigurationError
from pausepoint.worker.settings import Settings

AUTH_ENV = "FLOWER_BASIC_AUTH"
# Flower reads every FLOWER_* variable as an option; these would open it up.
_OPENING_ENV = ("FLOWER_UNAUTHENTICATED_API",)


def basic_auth(env: Mapping[str, str]) -> list[str]:
    """The ``user:password`` pairs Flower must require, or a ConfigurationError."""
    raw = env.get(AUTH_ENV, "").strip()
    if not raw:
        raise ConfigurationError(
            f"Flower needs a login: set {AUTH_ENV}=user:password "
            "(Flower can revoke tasks and resize pools, so it never starts open)"
        )
    pairs = [p.strip() for p in raw.split(",")]
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise ConfigurationError(
                f"{AUTH_ENV} must be user:password (comma-separated for several), "
                "each with a user name and a password"
            )
    return pairs


def flower_argv(settings: Settings, env: Mapping[str, str], address: str, port: int) -> list[str]:
    """The argv of ``celery flower`` for these settings; checks first, starts nothing."""
    basic_auth(env)
    if settings.embedded_broker:
        raise ConfigurationError(
            "Flower needs Redis or RabbitMQ as the broker (the SQLite broker has no "
            "event fan-out); see `pausepoint runs` and `pausepoint show` instead"
        )
    # The login itself stays in the environment: argv shows up in `ps`.
    return ["flower", f"--address={address}", f"--port={port}", "--unauthenticated_api=False"]


def run_flower(settings: Settings, address: str, port: int) -> None:
    """Start Flower in this process (returns when it stops)."""
    from pausepoint.worker.app import create_app

    argv = flower_argv(settings, os.environ, address, port)
    for name in _OPENING_ENV:
        os.environ.pop(name, None)
    create_app(settings).start(argv)
