"""The tools demo's agent: a support clerk who looks up an order, refunds it (a person
approves every refund) and emails the customer.

Its "external systems" are a JSON-lines ledger (``PAUSEPOINT_DEMO_LEDGER``, by default
``support-ledger.jsonl`` in the working folder): every attempt of every call is a line,
with the call's idempotency key. The payment system applies a refund once per key, as a
real one does with an ``Idempotency-Key``, so a call that runs again after a crash
cannot pay twice; the demo reads the ledger to show what ran how often.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pausepoint.tasks.tools import ToolContext, tool

AGENT = "support"
ORDERS = {
    "A-1001": {"customer": "ada@example.com", "total": 120.0, "status": "delivered damaged"},
    "A-1002": {"customer": "alan@example.com", "total": 35.0, "status": "in transit"},
}


def ledger_path() -> Path:
    return Path(os.environ.get("PAUSEPOINT_DEMO_LEDGER", "support-ledger.jsonl"))


def read_ledger(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or ledger_path()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(entry: dict[str, Any]) -> list[dict[str, Any]]:
    path = ledger_path()
    before = read_ledger(path)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return before


def _slow() -> float:
    return float(os.environ.get("PAUSEPOINT_DEMO_SLOW", "0"))


@tool(agent=AGENT)
def lookup_order(order_id: str, ctx: ToolContext) -> dict[str, Any]:
    """Look up an order in the shop's system.

    Args:
        order_id: The order's number, like A-1001.
    """
    _write({"tool": "lookup_order", "key": ctx.idempotency_key, "order_id": order_id})
    order = ORDERS.get(order_id)
    if order is None:
        raise LookupError(f"no order {order_id}")
    return {"order_id": order_id, **order}


@tool(agent=AGENT, needs_approval=True, group="support-leads")
def refund(order_id: str, amount: float, ctx: ToolContext) -> dict[str, Any]:
    """Refund part or all of an order to the customer's card.

    Args:
        order_id: The order's number.
        amount: How much to refund, in dollars.
    """
    before = _write({"tool": "refund", "key": ctx.idempotency_key, "attempt": True})
    applied = not any(e.get("applied") and e["key"] == ctx.idempotency_key for e in before)
    if applied:  # the payment system applies each idempotency key once
        _write({"tool": "refund", "key": ctx.idempotency_key, "applied": True, "amount": amount})
    return {"order_id": order_id, "refunded": amount, "new": applied}


@tool(agent=AGENT)
def email_customer(order_id: str, message: str, ctx: ToolContext) -> str:
    """Email the customer of an order.

    Args:
        order_id: The order's number.
        message: What to tell them.
    """
    _write({"tool": "email_customer", "key": ctx.idempotency_key, "started": True})
    time.sleep(_slow())  # the mail server is slow: the demo kills the worker here
    order = ORDERS.get(order_id, {})
    _write({"tool": "email_customer", "key": ctx.idempotency_key, "sent": True})
    return f"emailed {order.get('customer', 'the customer')}"
