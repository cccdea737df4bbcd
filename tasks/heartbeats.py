"""The lease heartbeat: one thread per process keeps its running steps' leases alive."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pausepoint.persistence.errors import StaleVersion
from pausepoint.persistence.records import Claim
from pausepoint.persistence.store import Store

log = logging.getLogger("pausepoint.runtime")


class _Beat:
    """One running step whose lease the heartbeat thread renews."""

    __slots__ = ("claim", "due", "owner", "store")

    def __init__(self, store: Store, claim: Claim, owner: str, due: float) -> None:
        self.store, self.claim, self.owner, self.due = store, claim, owner, due


class _Heartbeats:
    """One thread per process renews the leases of every step running in it.

    A step's lease is renewed every third of the lease while the step runs, so only
    a dead worker loses its run (two beats can be missed). Entering and leaving a step
    is a dict operation: a thread started per step cost a step 0.5-2 ms on 2 cores
    (bench/README.md). The thread is started on first use, and again whenever it is not
    running (in a forked child, or should it ever have died).
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also in a forked child: the parent's thread and its lock state do not come along.
        self._cond = threading.Condition()
        self._beats: dict[int, _Beat] = {}
        self._renewing: int | None = None
        self._next_key = 0
        self._thread: threading.Thread | None = None

    @contextmanager
    def beating(self, store: Store, claim: Claim, owner: str) -> Iterator[None]:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="pausepoint-lease", daemon=True
                )
                self._thread.start()
            self._next_key += 1
            key = self._next_key
            # Two beats before the lease runs out, also when a chained step starts with
            # only part of it left (the commit keeps the lease until half of it is used).
            lease = store.lease_seconds
            expires = claim.run.lease_expires_at
            left = (expires - store.clock()).total_seconds() if expires else lease
            due = time.monotonic() + max(0.0, min(lease / 3, left - 2 * lease / 3))
            self._beats[key] = _Beat(store, claim, owner, due)
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._beats.pop(key, None)
                # A renewal of this step in flight finishes before the step commits.
                while self._renewing == key:
                    self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(k, b) for k, b in self._beats.items() if b.due <= now]
                if not due:
                    nearest = min((b.due for b in self._beats.values()), default=None)
                    self._cond.wait(None if nearest is None else nearest - now)
                    continue
            for key, beat in due:
                with self._cond:
                    if key not in self._beats:
                        continue
                    self._renewing = key
                try:
                    self._renew(key, beat)
                except BaseException:  # the thread must outlive any one renewal
                    log.exception("run %s: lease renewal failed", beat.claim.run.id)
                finally:
                    with self._cond:
                        self._renewing = None
                        beat.due = time.monotonic() + beat.store.lease_seconds / 3
                        self._cond.notify_all()

    def _renew(self, key: int, beat: _Beat) -> None:
        run_id = beat.claim.run.id
        try:
            beat.store.renew_lease(beat.claim, beat.owner)
        except StaleVersion:
            log.warning("run %s: lease taken over while step ran", run_id)
            with self._cond:
                self._beats.pop(key, None)
        except Exception as exc:  # a database blip: the next beat tries again
            log.warning("run %s: lease renewal failed: %s", run_id, exc)


_heartbeats = _Heartbeats()
os.register_at_fork(after_in_child=_heartbeats._reset)
