"""The LangGraph side of the checkpoint-cost benchmark (:mod:`bench.checkpoint_cost`).

One graph, ``START -> agent -> END``, whose node reads the last few messages of
the state and returns one 200-character ``AIMessage``, the same text the
Pausepoint step says. A step is one ``invoke({}, thread)``, with LangGraph's
defaults (``durability="async"``: ``invoke`` returns once its checkpoints are
written). The input is empty on purpose: ``{"messages": [...]}`` would write the
channel a second time per step, and PostgresSaver would store a second blob of
the whole conversation. The state's ``messages`` key is either

* ``Annotated[list, add_messages]``: the default reducer. SqliteSaver stores
  the whole list in each of the step's three checkpoints (input, loop, node);
  PostgresSaver stores one blob of it per new channel version, or
* ``Annotated[list, DeltaChannel(_messages_delta_reducer)]``: LangGraph's
  (beta) delta channel; checkpoints store only the step's write plus a full
  snapshot every 100 updates (``snapshot_frequency``), and a read replays the
  writes since the last snapshot. ``_messages_delta_reducer`` is the batch
  reducer LangGraph ships for it (``langgraph.graph.message``).

Savers: ``SqliteSaver`` on a fresh file (it sets WAL itself) and
``PostgresSaver`` in a fresh schema of its own, each on one connection as
``from_conn_string`` opens it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import _messages_delta_reducer, add_messages

from bench.meters import TAIL, Meter, SqliteMeter, message, pg_metered_schema

STATES = ("add_messages", "DeltaChannel")
SAVERS = {"sqlite": "SqliteSaver", "postgres": "PostgresSaver"}


class AddMessagesState(TypedDict):
    messages: Annotated[list[Any], add_messages]


class DeltaState(TypedDict):
    messages: Annotated[list[Any], DeltaChannel(_messages_delta_reducer)]


def agent(state: Any) -> dict[str, Any]:
    """Look at the last few messages (as the Pausepoint step does), say one more."""
    history = state["messages"]
    recent = history[-TAIL:]
    if len(recent) != min(TAIL, len(history)):
        raise AssertionError("the tail of the conversation is short")
    return {"messages": [AIMessage(content=message(len(history)))]}


def graph(state: str) -> StateGraph[Any]:
    schema = {"add_messages": AddMessagesState, "DeltaChannel": DeltaState}[state]
    g: StateGraph[Any] = StateGraph(schema)
    g.add_node("agent", agent)
    g.add_edge(START, "agent")
    g.add_edge("agent", END)
    return g


class LangGraphSubject:
    """One LangGraph thread whose conversation grows by one message per ``invoke``."""

    def __init__(self, saver: Any, state: str, meter: Meter) -> None:
        self.app = graph(state).compile(checkpointer=saver)
        self.config: Any = {"configurable": {"thread_id": "bench"}}
        self.meter = meter
        self.timed = False  # the node reads the same in and out of windows
        self._last = 0

    def steps(self, n: int) -> None:
        """``n`` steps: one ``invoke`` each."""
        for _ in range(n):
            out = self.app.invoke({}, self.config)
            if len(out["messages"]) != self._last + 1:
                raise AssertionError(f"{len(out['messages'])} messages after {self._last + 1}")
            self._last += 1

    def messages(self) -> int:
        """Read back from the saver (for DeltaChannel: snapshot plus replayed writes)."""
        history = self.app.get_state(self.config).values["messages"]
        if any(m.content != message(i) for i, m in enumerate(history)):
            raise AssertionError("the stored conversation is not the one the node said")
        return len(history)


@contextmanager
def langgraph_subject(store: str, state: str) -> Iterator[LangGraphSubject]:
    """A fresh LangGraph thread on a fresh ``store`` ("sqlite" or "postgres")."""
    if store == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        with tempfile.TemporaryDirectory(prefix="pausepoint-bench-lg-") as tmp:
            path = Path(tmp) / "langgraph.db"
            with SqliteSaver.from_conn_string(str(path)) as saver:
                saver.setup()
                yield LangGraphSubject(saver, state, SqliteMeter(path))
        return
    from langgraph.checkpoint.postgres import PostgresSaver

    with pg_metered_schema("bench_lg_") as (dsn, meter):
        with PostgresSaver.from_conn_string(dsn) as saver:
            saver.setup()
            yield LangGraphSubject(saver, state, meter)
