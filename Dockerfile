# syntax=docker/dockerfile:1
# One image for every Pausepoint process: worker, beat, migrate, flower (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Celery warns when it runs as root: the processes run as this user.
RUN groupadd --system --gid 10001 pausepoint \
 && useradd --system --uid 10001 --gid pausepoint --create-home --shell /usr/sbin/nologin pausepoint

WORKDIR /app

# Packaging metadata first, then the three packages (tests, bench and the rest stay out).
# README.m[d] is a glob so the build works whether or not README.md exists yet.
COPY pyproject.toml README.m[d] ./
COPY persistence ./persistence
COPY tasks ./tasks
COPY worker ./worker

# Production extras only, no dev tools. The in-tree build leftovers are removed in the
# same layer; /app is handed to the app user so the embedded SQLite default (used by a
# bare `docker run`) can write its files there. /archive exists, owned by that user, so
# the named volume compose mounts there starts writable (retention's audit archive).
RUN pip install ".[postgres,redis,flower]" \
 && rm -rf build ./*.egg-info \
 && chown pausepoint:pausepoint /app \
 && mkdir /archive && chown pausepoint:pausepoint /archive

USER pausepoint

CMD ["pausepoint", "worker"]
