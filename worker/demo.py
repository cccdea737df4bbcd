"""`pausepoint demo`: loan applications on a real worker, on the embedded default.

Everything a person would do goes through the same paths they would use: the
worker is a `pausepoint worker` process, approvals are `pausepoint approve`
and `pausepoint reject` commands. Midway the worker is stopped; decisions made
while it is down wait in the store and the broker, and a new worker finishes
every run from its last checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.rule import Rule

from pausepoint.persistence.errors import PausepointError
from pausepoint.persistence.records import FINISHED, WAITING, RunRecord
from pausepoint.persistence.store import Store
from pausepoint.worker.procs import Proc
from pausepoint.worker.render import events_table, runs_table
from pausepoint.worker.settings import Settings

AGENT = "loan_processor"
PERSONA = "I am a loan processing assistant for a regional bank."
INSTRUCTION = "Follow strict compliance guidelines; never approve without a human underwriter."
STRATEGY = "Compute debt-to-income and loan-to-income ratios, then recommend."

# (applicant, amount, income, debt, the underwriter's decision)
APPLICATIONS = [
    ("Ada Lovelace", 25_000, 90_000, 4_000, True),
    ("Grace Hopper", 40_000, 120_000, 10_000, True),
    ("Alan Turing", 15_000, 60_000, 2_000, True),
    ("Edsger Dijkstra", 180_000, 30_000, 22_000, False),
    ("Barbara Liskov", 30_000, 75_000, 6_000, True),
    ("Donald Knuth", 20_000, 80_000, 1_000, True),
]


class DemoFailed(PausepointError):
    """The demo did not get where it expected to."""


# A folder the demo made holds this file; only such a folder is ever reused.
MARKER = ".pausepoint-demo"
# What a demo writes there, and all that a next demo removes (SQLite adds -wal and -shm).
DEMO_FILES = ("pausepoint.db*", "broker.db*", "worker.log", "tools-*")


def prepare_dir(base: Path) -> None:
    """Make ``base`` ready for a demo without ever deleting anything of the user's.

    A new or empty folder is used as is. A folder a previous demo made (it has MARKER)
    loses that demo's own files and nothing else. Any other folder is refused.
    """
    if base.exists() and not base.is_dir():
        raise DemoFailed(f"--dir {base} is a file, not a folder")
    if base.exists():
        entries = list(base.iterdir())
        if entries and not (base / MARKER).is_file():
            raise DemoFailed(
                f"--dir {base} is not empty and is not a previous demo's folder: nothing "
                "was changed; give a new or empty folder (the default is .pausepoint-demo)"
            )
        for pattern in DEMO_FILES:
            for path in base.glob(pattern):
                if path.is_file() or path.is_symlink():
                    path.unlink()
    base.mkdir(parents=True, exist_ok=True)
    (base / MARKER).write_text(
        "Made by `pausepoint demo`. The next demo run with this --dir replaces its own files "
        f"here ({', '.join(DEMO_FILES)}) and leaves anything else alone.\n"
    )


def run_demo(directory: str, count: int, console: Console, tools: bool = True) -> int:
    """The loan demo, then (``tools``) the tools demo, on the same store."""
    base = Path(directory).resolve()
    prepare_dir(base)
    env = dict(os.environ)
    env.update(
        PAUSEPOINT_STORE_URL=f"sqlite:///{base / 'pausepoint.db'}",
        PAUSEPOINT_BROKER_URL=f"sqla+sqlite:///{base / 'broker.db'}",
        PAUSEPOINT_LLM="scripted",
        PAUSEPOINT_SWEEP_INTERVAL="1",
        PAUSEPOINT_REDELIVER_AFTER="5",
    )
    settings = Settings(
        store_url=env["PAUSEPOINT_STORE_URL"], broker_url=env["PAUSEPOINT_BROKER_URL"]
    )
    from pausepoint.worker.app import create_app, runtime

    rt = runtime(create_app(settings))
    store = rt.store
    worker = Proc(
        "pausepoint worker",
        [sys.executable, "-m", "pausepoint.worker", "worker", "--concurrency", "2"],
        env,
        base / "worker.log",
    )
    started = time.monotonic()
    try:
        code = _script(console, env, store, rt.start, worker, count, started)
        if not tools:
            return code
        from pausepoint.worker.demo_tools import run_tools_demo

        return code if run_tools_demo(base, env, store, console) else 1
    except DemoFailed as exc:
        raise DemoFailed(f"{exc} ({base / 'worker.log'})") from None
    finally:
        worker.stop()
        store.close()


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pausepoint.worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise DemoFailed(f"pausepoint {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _watch(
    console: Console,
    store: Store,
    ids: list[str],
    done: Callable[[list[RunRecord]], bool],
    title: str,
    timeout: float = 60.0,
) -> list[RunRecord]:
    deadline = time.monotonic() + timeout
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            runs = [store.get_run(i) for i in ids]
            live.update(runs_table(runs, title=title, compact=True))
            if done(runs):
                return runs
            if time.monotonic() > deadline:
                raise DemoFailed(f"gave up waiting ({title}); see the worker log")
            time.sleep(0.25)


def _script(
    console: Console,
    env: dict[str, str],
    store: Store,
    start: Callable[..., RunRecord],
    worker: Proc,
    count: int,
    started: float,
) -> int:
    apps = APPLICATIONS[:count] if count <= len(APPLICATIONS) else APPLICATIONS
    console.print(
        Rule("[bold]Pausepoint demo[/]: loan applications, a human in the loop, a worker restart")
    )
    console.print(
        f"store and broker: SQLite files in {Path(env['PAUSEPOINT_STORE_URL'][10:]).parent}"
    )
    _cli(
        env,
        "agent",
        AGENT,
        "--persona",
        PERSONA,
        "--instruction",
        INSTRUCTION,
        "--strategy",
        STRATEGY,
    )
    console.print(
        f"1. agent [bold]{AGENT}[/] created; starting a worker (2 processes, embedded beat)"
    )
    worker.start()

    ids = []
    for name, amount, income, debt, _ in apps:
        run = start(
            "loan",
            agent=AGENT,
            task=f"Loan application from {name}: amount {amount}, income {income}, debt {debt}",
            input={"applicant": name},
            actor="demo",
        )
        ids.append(run.id)
    console.print(
        f"2. {len(ids)} applications queued for one agent; each assesses, then waits for a person"
    )
    _watch(console, store, ids, lambda rs: all(r.status == WAITING for r in rs), "Assessing…")

    first = ids[0]
    console.print(f"3. an underwriter approves {apps[0][0]}'s loan with `pausepoint approve`")
    _cli(env, "approve", first, "--by", "alice@underwriting", "--comment", "Solid income, low debt")
    _watch(console, store, ids, lambda rs: rs[0].status in FINISHED, "Resuming the approved run…")

    console.print(
        "4. [bold red]the worker is stopped[/] while the other runs wait (a wait holds no worker)"
    )
    worker.stop(grace=20)
    assert not worker.alive
    console.print("5. decisions arrive while no worker runs: they are stored and queued")
    expected = {first: "approved"}
    for run_id, (name, *_, approve) in list(zip(ids, apps, strict=True))[1:]:
        if approve:
            _cli(env, "approve", run_id, "--by", "bob@underwriting", "--comment", f"OK for {name}")
        else:
            _cli(env, "reject", run_id, "--by", "bob@underwriting", "--comment", "Debt too high")
        expected[run_id] = "approved" if approve else "rejected"
        console.print(f"   {'approved' if approve else '[red]rejected[/]'}: {name} ({run_id[:8]}…)")

    console.print("6. a new worker starts and picks every run up from its last checkpoint")
    worker.start()
    runs = _watch(
        console, store, ids, lambda rs: all(r.status in FINISHED for r in rs), "Finishing…"
    )
    worker.stop()

    console.print(Rule("Outcomes"))
    ok = True
    for run in runs:
        got = run.result.get("outcome") if isinstance(run.result, dict) else None
        mark = "[green]✓[/]" if got == expected[run.id] else "[red]✗[/]"
        ok = ok and got == expected[run.id]
        by = run.result.get("by") if isinstance(run.result, dict) else ""
        console.print(f"{mark} {run.id[:8]}… {run.task[:48]:48} → {got} by {by}")
    shown = ids[-1]
    console.print(Rule(f"Audit trail of run {shown}"))
    console.print(events_table(store.events(shown)))
    elapsed = time.monotonic() - started
    verdict = "[green]all runs finished with their own outcome[/]" if ok else "[red]unexpected[/]"
    console.print(
        f"{verdict} in {elapsed:.0f}s; no worker process left. Try: `pausepoint show {shown}` with "
        f"PAUSEPOINT_STORE_URL={env['PAUSEPOINT_STORE_URL']}"
    )
    return 0 if ok else 1
