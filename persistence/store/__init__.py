"""The run store: every state transition of a run, each ONE transaction.

The store is a package of rooms, each a class owning one concern; :class:`Store` is
all of them on one engine:

===============  ==========================================================
``core``         engine, clock, dialect, transactions, ``_apply`` (the CAS)
``agents``       agents: persona, instruction, strategy, model settings
``runs``         starting runs (idempotency keys)
``steps``        a step's claim, its lease, the commit of its outcome
``waits``        opening a wait, and what already fulfils it
``approvals``    a person's decision on an approval
``deliveries``   callbacks and events from other systems
``resources``    named capacities and their slots
``lineage``      rollback, fork, legal hold
``memory``       an agent's long-term memory; a run's conversation summaries
``sweeper``      redelivery, lease recovery, deadlines
``sessions``     the seed API's plain-Python ``Agent`` sessions
``secret``       the store's secret for callback tokens
``reads``        reads of runs, checkpoints, conversations, trails, waits
``trail``        verifying trails (a run, the store) and sealing the ledger
``dialect``      the seam; ``sqlite`` and ``postgres`` are its two sides
===============  ==========================================================

Reads of single rows live in :mod:`persistence.queries`, shared by every room.
"""

from __future__ import annotations

from typing import Any

from pausepoint.persistence.engine import make_engine
from pausepoint.persistence.store.agents import AgentsRoom
from pausepoint.persistence.store.approvals import ApprovalsRoom
from pausepoint.persistence.store.core import Clock, StoreCore, ensure_json, new_run_id, utcnow
from pausepoint.persistence.store.deliveries import DeliveriesRoom
from pausepoint.persistence.store.lineage import LineageRoom
from pausepoint.persistence.store.memory import MemoryRoom
from pausepoint.persistence.store.reads import ReadsRoom
from pausepoint.persistence.store.secret import SecretRoom
from pausepoint.persistence.store.sessions import SessionsRoom
from pausepoint.persistence.store.steps import StepsRoom
from pausepoint.persistence.store.sweeper import SweeperRoom
from pausepoint.persistence.store.trail import TrailRoom
from pausepoint.persistence.store.waits import TokenHasher

__all__ = [
    "Clock",
    "Store",
    "StoreCore",
    "TokenHasher",
    "ensure_json",
    "new_run_id",
    "utcnow",
]


class Store(
    AgentsRoom,
    SessionsRoom,
    StepsRoom,
    ApprovalsRoom,
    DeliveriesRoom,
    LineageRoom,
    MemoryRoom,
    SweeperRoom,
    SecretRoom,
    ReadsRoom,
    TrailRoom,
):
    """The run store on one SQLAlchemy engine (SQLite or Postgres)."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        migrate: bool = True,
        engine_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Store:
        """Open the store at ``url``, creating or upgrading its schema unless told not to;
        ``engine_options`` go to the engine (its connection pool's size, say)."""
        store = cls(make_engine(url, **(engine_options or {})), **kwargs)
        if migrate:
            store.ensure_schema()
        return store
