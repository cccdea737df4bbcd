"""Entry module for the celery command and Flower: ``celery -A pausepoint.worker.main flower``.

Importing it reads the settings from the environment (it is an entry point).
"""

from __future__ import annotations

from pausepoint.worker.app import create_app

app = create_app()
