"""Entry module for the celery command and Flower: ``celery -A worker.main flower``.

Importing it reads the settings from the environment (it is an entry point).
"""

from __future__ import annotations

from worker.app import create_app

app = create_app()
