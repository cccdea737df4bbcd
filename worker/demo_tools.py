"""The tools demo (the second part of `pausepoint demo`): an agent loop through an
approval and a killed worker, on the embedded default.

A support agent (strategy ``react``) looks up an order, proposes a refund (every refund
waits for a person: the lead approves it with a smaller amount), and emails the
customer. While the email is being sent the worker is SIGKILLed; a new worker picks
the run up at the first call without a recorded result. The ledger of the "external
systems" and the audit trail then show that no finished call ran again.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from pausepoint.persistence.records import COMPLETED, FINISHED, WAITING
from pausepoint.persistence.store import Store
from pausepoint.tasks.support_example import AGENT, read_ledger
from pausepoint.worker.demo import DemoFailed, _cli, _watch
from pausepoint.worker.procs import Proc

TASK = "Order A-1001 arrived damaged: refund $40 and email the customer an apology."
PERSONA = "You are a support clerk for an online shop."
INSTRUCTION = "Check the order first. A refund needs a lead's approval."
# What the lead approves instead of the proposed amount.
EDITED_AMOUNT = 30.0
FILES = ("tools-ledger.jsonl", "tools-worker.log")


def run_tools_demo(base: Path, env: dict[str, str], store: Store, console: Console) -> bool:
    started = time.monotonic()
    ledger = base / "tools-ledger.jsonl"
    for name in FILES:
        (base / name).unlink(missing_ok=True)
    env = dict(env)
    env.update(
        PAUSEPOINT_DEMO_LEDGER=str(ledger),
        PAUSEPOINT_DEMO_SLOW="1.5",
        PAUSEPOINT_LEASE_SECONDS="3",
    )
    argv = [sys.executable, "-m", "pausepoint.worker", "worker", "--concurrency", "1"]
    worker = Proc("pausepoint worker", argv, env, base / "tools-worker.log")
    try:
        return _script(console, env, store, worker, ledger, started)
    finally:
        worker.stop()


def _script(
    console: Console, env: dict[str, str], store: Store, worker: Proc, ledger: Path, started: float
) -> bool:
    console.print(Rule("[bold]Part 2[/]: an agent with tools, an approval, a killed worker"))
    _cli(
        env,
        "agent",
        AGENT,
        "--persona",
        PERSONA,
        "--instruction",
        INSTRUCTION,
        "--strategy",
        "react",
    )
    worker.start()
    run_id = _cli(env, "start", "agent", "--agent", AGENT, "--task", TASK).split()[-1]
    console.print(
        f"1. agent [bold]{AGENT}[/] (tools: lookup_order, refund, email_customer) "
        f"starts run {run_id[:8]}…"
    )
    _watch(
        console,
        store,
        [run_id],
        lambda rs: rs[0].status in (WAITING, *FINISHED),
        "Looking the order up…",
    )
    run = store.get_run(run_id)
    if run.status != WAITING:
        raise DemoFailed(f"the run should wait for the refund's approval; it is {run.status}")
    wait = store.waits(run_id=run_id)[-1]
    console.print(f"2. it parks for a person (no worker held): [italic]{wait.prompt}[/]")
    edited = json.dumps({"arguments": {"order_id": "A-1001", "amount": EDITED_AMOUNT}})
    _cli(
        env, "approve", run_id, "--by", "lead@support", "--comment", "policy: $30", "--data", edited
    )
    console.print(f"3. the lead approves it with the amount edited to ${EDITED_AMOUNT:.0f}")
    deadline = time.monotonic() + 30
    while not any(e.get("tool") == "email_customer" for e in read_ledger(ledger)):
        if time.monotonic() > deadline:
            raise DemoFailed("the email was never started")
        time.sleep(0.02)
    worker.kill()
    console.print("4. [bold red]the worker is SIGKILLed[/] while the email is being sent")
    worker.start()
    console.print("5. a new worker starts; the sweeper finds the dead lease and re-queues the step")
    _watch(console, store, [run_id], lambda rs: rs[0].status in FINISHED, "Recovering…", timeout=60)
    return _report(console, store, run_id, ledger, started)


def _report(console: Console, store: Store, run_id: str, ledger: Path, started: float) -> bool:
    run = store.get_run(run_id)
    console.print(Rule("The conversation, as the model saw it"))
    for m in store.history(run_id):
        chat = m.as_chat()
        calls = chat.get("tool_calls") or []
        text = (chat.get("content") or "").strip().replace("\n", " ")
        if calls:
            for c in calls:
                fn = c["function"]
                console.print(f"  [cyan]{m.role:9}[/] → {fn['name']}({fn['arguments']})")
        elif m.role == "tool":
            console.print(f"  [green]{'tool':9}[/] ← {text[:100]}")
        else:
            console.print(f"  [cyan]{m.role:9}[/] {text[:100]}")
    entries = read_ledger(ledger)
    attempts = Counter(
        (e["tool"], e["key"])
        for e in entries
        if "attempt" in e or "order_id" in e or "started" in e
    )
    applied = Counter(e["key"] for e in entries if e.get("applied"))
    recorded = Counter(
        (e.data["tool_call"]["name"], e.data["tool_call"]["key"])
        for e in store.events(run_id)
        if "outcome" in e.data.get("tool_call", {})
    )
    table = Table(title="Each tool call: ran (ledger) vs recorded (audit trail)")
    for col in ("tool", "idempotency key", "attempts", "results recorded", "effect"):
        table.add_column(col)
    ok = run.status == COMPLETED
    for (tool, key), n in recorded.items():
        tried = attempts[(tool, key)]
        effect = f"refund applied {applied[key]} time(s)" if tool == "refund" else ""
        note = " (killed mid-call, ran again with its key)" if tried > 1 else ""
        short = f"{key[:8]}…{key[len(run_id) :]}" if key.startswith(run_id) else key
        table.add_row(tool, short, f"{tried}{note}", str(n), effect)
        ok = ok and n == 1 and (tool == "email_customer" or tried == 1)
        ok = ok and (tool != "refund" or applied[key] == 1)
    console.print(table)
    refunded = [e.get("amount") for e in entries if e.get("applied")]
    ok = ok and refunded == [EDITED_AMOUNT]
    verdict = (
        "[green]no finished call ran twice; one refund, of the approved amount[/]"
        if ok
        else "[red]unexpected[/]"
    )
    console.print(
        f"{verdict} ({time.monotonic() - started:.0f}s). "
        f"Answer: {run.result.get('answer', '')[:120]!r}"
    )
    return ok
