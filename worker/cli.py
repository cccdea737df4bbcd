"""The ``pausepoint`` command line."""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import OperationalError as DBOperationalError

from pausepoint.persistence.errors import InvalidInput, PausepointError
from pausepoint.persistence.jsonvalues import parse_json
from pausepoint.persistence.store import Store
from pausepoint.worker.serialize import plain
from pausepoint.worker.settings import POOLS, Settings

P = ParamSpec("P")
R = TypeVar("R")

cli = typer.Typer(
    name="pausepoint",
    help="Durable, pausable AI agents on Celery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="The store's schema (Alembic migrations).", no_args_is_help=True)
cli.add_typer(db_cli, name="db")

console = Console()
# Below this many columns, `runs` shows short run ids (commands take unique prefixes).
WIDE = 150
err = Console(stderr=True)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into a one-line message and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PausepointError as exc:
            fail(str(exc))
        except DBOperationalError as exc:
            fail(f"cannot use the store: {exc.orig}")
        except ValidationError as exc:
            fail("bad settings: " + "; ".join(_setting_error(e) for e in exc.errors()))
        raise typer.Exit(1)

    return wrapper


def fail(message: str) -> None:
    """One line on stderr, printed as is: user text is never read as markup."""
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True, highlight=False)


def _setting_error(error: Any) -> str:
    name = "PAUSEPOINT_" + "_".join(str(p) for p in error["loc"]).upper()
    return f"{name}: {error['msg']}"


def settings() -> Settings:
    return Settings()


def open_store() -> Store:
    s = settings()
    return Store.from_url(s.store_url, audit_keys=s.audit_keys())


def parse_json_object(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, like '{{\"amount\": 25000}}'")
    return value


def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


# ---------------------------------------------------------------- processes


@cli.command()
@friendly
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            max=1024,
            help="Steps at once (default: 2 on prefork, 64 on threads).",
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            help="prefork (processes: steps that compute) or threads (steps that wait on "
            "a model or an API: dozens to hundreds at once)."
        ),
    ] = None,
    beat: Annotated[
        bool | None,
        typer.Option(
            help="Run beat (the sweeper) inside the worker. Default: on with the embedded broker."
        ),
    ] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. w1@%h.")] = None,
    loglevel: Annotated[str | None, typer.Option(help="Log level.")] = None,
    queues: Annotated[str | None, typer.Option(help="Queues to consume, comma-separated.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve Prometheus metrics on this port."),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Threads pool: worker processes sharing the concurrency (one per core "
            "uses every core; one process's threads share one).",
        ),
    ] = None,
) -> None:
    """Run a Celery worker that executes agent steps."""
    from pausepoint.worker.app import create_app

    s = settings()
    if pool is not None:
        if pool not in POOLS:
            raise InvalidInput(f"unknown pool {pool!r}; one of: {', '.join(POOLS)}")
        s = s.model_copy(update={"pool": pool})
    if concurrency is not None:
        s = s.model_copy(update={"concurrency": concurrency})
    if processes is not None:
        s = s.model_copy(update={"processes": processes})
    if s.processes > 1 and s.pool != "threads":
        raise InvalidInput(
            "--processes is for the threads pool; prefork's --concurrency is processes"
        )
    Store.from_url(s.store_url).close()  # migrate once, before the children start
    port = metrics_port or s.metrics_port
    if port:
        from pausepoint.worker.metrics import serve_worker_metrics

        try:
            serve_worker_metrics(
                port, s.metrics_host, multiprocess=s.pool == "prefork" or s.processes > 1
            )
        except OSError as exc:
            raise InvalidInput(
                f"cannot serve metrics on {s.metrics_host}:{port}: {exc.strerror or exc}"
            ) from exc
    run_beat = beat if beat is not None else s.embedded_broker
    if s.processes > 1:
        raise typer.Exit(_supervised(s, run_beat, hostname, loglevel or s.log_level, queues))
    app = create_app(s)
    argv = [
        "worker",
        f"--loglevel={loglevel or s.log_level}",
        f"--pool={s.pool}",
        f"--concurrency={s.worker_concurrency()}",
        "--task-events",
    ]
    if run_beat:
        argv.append("--beat")
    if hostname:
        argv.append(f"--hostname={hostname}")
    if queues:
        argv.append(f"--queues={queues}")
    app.worker_main(argv)


def _supervised(
    s: Settings, run_beat: bool, hostname: str | None, loglevel: str, queues: str | None
) -> int:
    """``s.processes`` worker processes of ``concurrency / processes`` threads each."""
    from pausepoint.worker.supervise import child_hostname, supervise, worker_argv

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/supervisor] %(message)s"))
    supervisor_log = logging.getLogger("pausepoint.worker.supervise")
    supervisor_log.addHandler(handler)
    supervisor_log.setLevel(loglevel.upper())
    per = -(-s.worker_concurrency() // s.processes)
    env = {k: v for k, v in os.environ.items() if k != "PAUSEPOINT_METRICS_PORT"}
    env["PAUSEPOINT_PROCESSES"] = "1"

    def argv_of(i: int) -> list[str]:
        args = ["--pool", "threads", "-c", str(per), "--loglevel", loglevel]
        args += ["--hostname", child_hostname(hostname, i)]
        args.append("--beat" if run_beat and i == 1 else "--no-beat")
        if queues:
            args += ["--queues", queues]
        return worker_argv(args)

    return supervise(argv_of, s.processes, env)


@cli.command("beat")
@friendly
def beat_cmd(
    loglevel: Annotated[str | None, typer.Option(help="Log level.")] = None,
) -> None:
    """Run beat alone (production): it schedules the sweeper."""
    from pausepoint.worker.app import create_app

    s = settings()
    Store.from_url(s.store_url).close()
    create_app(s).start(["beat", f"--loglevel={loglevel or s.log_level}"])


@cli.command()
@friendly
def sweep() -> None:
    """Run one sweeper pass now: re-send lost messages, recover dead workers, fire deadlines."""
    from pausepoint.worker.app import create_app, runtime

    report = runtime(create_app(settings())).sweep()
    console.print(
        f"published {len(report.republished)}, lease expired {len(report.lease_expired)}, "
        f"deadlines {len(report.deadlines)}, failed {len(report.failed)}, "
        f"skipped {len(report.skipped)}"
    )
    for row in report.skipped:
        fail(f"skipped {row}: it could not be handled (see the log); the rest were")


# ------------------------------------------------------------------- agents


@cli.command()
@friendly
def agent(
    name: Annotated[str, typer.Argument(help="The agent's name.")],
    persona: Annotated[str | None, typer.Option(help="Who the agent is.")] = None,
    instruction: Annotated[str | None, typer.Option(help="What it must always do.")] = None,
    strategy: Annotated[str | None, typer.Option(help="How it goes about its work.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help='Model settings as JSON, e.g. {"model": "x", "context_window": 32768, '
            '"reply_tokens": 2048, "memory": {"episodes": true}}.'
        ),
    ] = None,
) -> None:
    """Create an agent, or update the fields given."""
    settings_json = parse_json_object(model, "--model")
    if settings_json is not None:
        from pausepoint.tasks.budgets import check_loop_settings
        from pausepoint.tasks.context_builder import ContextSettings

        # Bad settings are refused here, not in the middle of a run.
        ContextSettings.from_model(settings_json)
        check_loop_settings(settings_json)
    record = open_store().save_agent(
        name, persona=persona, instruction=instruction, strategy=strategy, model=settings_json
    )
    console.print(Text.assemble("agent ", (record.name, "bold"), " saved"))


@cli.command()
@friendly
def agents() -> None:
    """List agents."""
    from rich.table import Table

    table = Table(title="Agents", header_style="bold")
    for col in ("name", "persona", "instruction", "strategy", "model"):
        table.add_column(col)
    from pausepoint.worker.render import short

    for a in open_store().list_agents():
        table.add_row(
            Text(a.name),
            Text(short(a.persona, 40)),
            Text(short(a.instruction, 40)),
            Text(short(a.strategy, 30)),
            Text(short(a.model, 30)),
        )
    console.print(table)


@cli.command()
@friendly
def workflows() -> None:
    """List the workflows this installation knows."""
    from pausepoint.tasks.workflow import registry

    registry.load(settings().workflows)
    for name in registry.names():
        wf = registry.get(name)
        console.print(
            Text.assemble((name, "bold"), f": {wf.description}  (steps: {', '.join(wf.steps)})")
        )


# --------------------------------------------------------------------- runs


@cli.command()
@friendly
def start(
    workflow: Annotated[str, typer.Argument(help="Workflow name (see `pausepoint workflows`).")],
    agent: Annotated[str, typer.Option("--agent", help="The agent that runs it.")],
    task: Annotated[str, typer.Option("--task", help="What to do.")] = "",
    input: Annotated[
        str | None, typer.Option("--input", help="Run input as a JSON object.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Same key, same run: safe to retry.")
    ] = None,
) -> None:
    """Start a run and queue its first step."""
    from pausepoint.worker.app import create_app, runtime

    data = parse_json_object(input, "--input")
    rt = runtime(create_app(settings()))
    run = rt.start(
        workflow,
        agent=agent,
        task=task,
        input=data,
        idempotency_key=idempotency_key,
        actor=default_actor(),
    )
    console.print(run.id)


@cli.command()
@friendly
def runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's runs.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow's runs.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List runs."""
    from pausepoint.persistence.records import RUN_STATUSES
    from pausepoint.worker.render import runs_table

    if status is not None and status not in RUN_STATUSES:
        raise InvalidInput(f"unknown status {status!r}; one of: {', '.join(RUN_STATUSES)}")
    found = open_store().list_runs(status=status, agent=agent, workflow=workflow, limit=limit)
    if as_json:
        for run in found:
            print(json.dumps(plain(run)))
        return
    console.print(runs_table(found, compact=console.width < WIDE))


@cli.command()
@friendly
def show(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    at: Annotated[
        int | None,
        typer.Option(
            "--at",
            help="Show checkpoint SEQ as it was: state, conversation, and what changed "
            "from the checkpoint before it (`pausepoint history RUN` lists them).",
            metavar="SEQ",
        ),
    ] = None,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all", help="The whole conversation and trail, not only the latest 50 of each."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
) -> None:
    """Show a run: state, the latest messages, waits and events (or one checkpoint, --at)."""
    from pausepoint.worker.pages import TAIL, checkpoint_view, conversation_events, run_detail
    from pausepoint.worker.render import checkpoint_panel, earlier_note, run_panel

    store = open_store()
    run_id = store.resolve_run_id(run_id)
    limit = None if show_all else TAIL
    if at is not None:
        view = checkpoint_view(store, run_id, at, limit=limit)
        if as_json:
            print(json.dumps(view, indent=2, default=str))
        else:
            console.print(checkpoint_panel(view))
        return
    if as_json:
        print(json.dumps(run_detail(store, run_id, limit=limit), indent=2))
        return
    tail = store.tail(run_id, messages=limit, events=limit)
    run = tail.run
    trail = tail.events
    calls = conversation_events(store, run_id, tail.history, trail)
    console.print(run_panel(run, tail.checkpoint, tail.history, tail.waits, trail, calls))
    earlier = [
        (run.history_len - len(tail.history) if tail.checkpoint else 0, "message", "messages"),
        (trail[0].n - 1 if trail else 0, "event", "events"),
    ]
    for count, one, path in earlier:
        if count:
            console.print(earlier_note(run_id, count, one, path), soft_wrap=True)


@cli.command("history")
@friendly
def history_cmd(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    show_all: Annotated[
        bool, typer.Option("--all", help="Every checkpoint, not only the latest 50.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List a run's checkpoints (the latest 50, or --all): what each changed, what led to
    it, rollbacks and forks."""
    from pausepoint.persistence.jsonvalues import MAX_SEQ
    from pausepoint.worker.pages import TAIL, timeline_entries, whole_timeline
    from pausepoint.worker.render import earlier_note, history_view

    store = open_store()
    run_id = store.resolve_run_id(run_id)
    if show_all:
        run = store.get_run(run_id)
        steps = whole_timeline(store, run_id)
        total = len(steps)
    else:
        rows = store.timeline_rows(run_id, before=MAX_SEQ, limit=TAIL)
        run, steps, total = rows.run, timeline_entries(rows), rows.total
    forks = store.forks(run_id)
    if as_json:
        out = {
            "run_id": run.id,
            "status": run.status,
            "seq": run.seq,
            "parent_run_id": run.parent_run_id,
            "parent_seq": run.parent_seq,
            "forks": [{"run_id": f.id, "at_seq": f.parent_seq, "status": f.status} for f in forks],
            "checkpoints": steps,
            "checkpoints_page": {
                "total": total,
                "start": steps[0]["seq"] if steps else None,
                "stop": steps[-1]["seq"] + 1 if steps else None,
                "before": steps[0]["seq"] if len(steps) < total else None,
                "href": f"/runs/{run.id}/checkpoints?before={steps[0]['seq']}"
                if len(steps) < total
                else None,
            },
        }
        print(json.dumps(out, indent=2, default=str))
        return
    console.print(history_view(run, steps, forks))
    if len(steps) < total:
        note = earlier_note(run_id, total - len(steps), "checkpoint", "checkpoints")
        console.print(note, soft_wrap=True)


def _decide(
    run_id: str,
    approved: bool,
    comment: str,
    by: str | None,
    data: str | None,
    arguments: str | None = None,
) -> None:
    from pausepoint.worker.app import create_app, runtime
    from pausepoint.worker.serialize import decision_data

    payload = parse_json_object(data, "--data")
    edited = parse_json_object(arguments, "--arguments")
    rt = runtime(create_app(settings()))
    run_id = rt.store.resolve_run_id(run_id)
    payload = decision_data(rt.store, run_id, payload, edited)
    run = rt.decide(
        run_id, approved=approved, actor=by or default_actor(), comment=comment, data=payload
    )
    verb = "approved" if approved else "rejected"
    console.print(
        Text.assemble(
            "run ", (run.id, "bold"), f" {verb}; it resumes at step ", (run.step or "", "bold")
        )
    )


@cli.command()
@friendly
def approve(
    run_id: Annotated[str, typer.Argument(help="The waiting run's id.")],
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    by: Annotated[str | None, typer.Option(help="Who decides (default: cli:$USER).")] = None,
    data: Annotated[
        str | None, typer.Option(help="Edited input for the next step, as JSON.")
    ] = None,
    arguments: Annotated[
        str | None,
        typer.Option(
            help="For a tool call: run it with these arguments instead, as a JSON "
            "object, e.g. '{\"amount\": 40}'."
        ),
    ] = None,
) -> None:
    """Approve a run that waits for approval; its next step is queued."""
    _decide(run_id, True, comment, by, data, arguments)


@cli.command()
@friendly
def reject(
    run_id: Annotated[str, typer.Argument(help="The waiting run's id.")],
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    by: Annotated[str | None, typer.Option(help="Who decides (default: cli:$USER).")] = None,
) -> None:
    """Reject a run that waits for approval; its next step is queued to handle it."""
    _decide(run_id, False, comment, by, None)


# ------------------------------------------------------ rollback, fork, hold


@cli.command()
@friendly
def rollback(
    run_id: Annotated[str, typer.Argument(help="The run's id (not running).")],
    to: Annotated[
        int,
        typer.Option(
            "--to",
            help="The checkpoint to continue from (`pausepoint history RUN`).",
            metavar="SEQ",
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    by: Annotated[str | None, typer.Option(help="Who does it (default: cli:$USER).")] = None,
) -> None:
    """Continue a run from an earlier checkpoint; its next step is queued, or it waits again.

    Nothing is deleted: the later checkpoints, messages and events stay in the trail.
    """
    from pausepoint.worker.app import create_app, runtime

    rt = runtime(create_app(settings()))
    run_id = rt.store.resolve_run_id(run_id)
    before = rt.store.get_run(run_id)
    run = rt.rollback(run_id, to, actor=by or default_actor(), reason=reason)
    console.print(
        Text.assemble(
            "run ",
            (run.id, "bold"),
            f" rolled back from #{before.seq} to #{to}: now at checkpoint #{run.seq}, ",
            (run.status, "bold"),
            f" at step {run.step or '-'}",
        )
    )


@cli.command()
@friendly
def fork(
    run_id: Annotated[str, typer.Argument(help="The run to fork.")],
    at: Annotated[
        int | None,
        typer.Option(
            "--at", help="The checkpoint to fork at (default: the latest).", metavar="SEQ"
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    by: Annotated[str | None, typer.Option(help="Who does it (default: cli:$USER).")] = None,
) -> None:
    """Start a new, independent run from a checkpoint of this one; prints the new run's id."""
    from pausepoint.worker.app import create_app, runtime

    rt = runtime(create_app(settings()))
    run_id = rt.store.resolve_run_id(run_id)
    child = rt.fork(run_id, at, actor=by or default_actor(), reason=reason)
    console.print(
        Text.assemble(
            "run ",
            (child.id, "bold"),
            f" forked from run {child.parent_run_id} at checkpoint #{child.parent_seq}: ",
            (child.status, "bold"),
            f" at step {child.step or '-'}",
        )
    )


@cli.command()
@friendly
def hold(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    release: Annotated[bool, typer.Option("--release", help="Lift the hold instead.")] = False,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    by: Annotated[str | None, typer.Option(help="Who does it (default: cli:$USER).")] = None,
) -> None:
    """Put a run under legal hold (retention never touches it), or lift the hold."""
    from pausepoint.worker.app import create_app, runtime

    rt = runtime(create_app(settings()))
    run_id = rt.store.resolve_run_id(run_id)
    on = not release
    if rt.store.get_run(run_id).legal_hold == on:
        state = "already under legal hold" if on else "not under legal hold"
        console.print(Text.assemble("run ", (run_id, "bold"), f" is {state}; nothing changed"))
        return
    run = rt.set_legal_hold(run_id, on, actor=by or default_actor(), reason=reason)
    what = (
        " is under legal hold: retention leaves it alone"
        if run.legal_hold
        else ": legal hold lifted; retention applies again"
    )
    console.print(Text.assemble("run ", (run.id, "bold"), what))


# ---------------------------------------------------------------- retention


@cli.command()
@friendly
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would go; change nothing.")
    ] = False,
    batch: Annotated[int, typer.Option(help="Runs per transaction.", min=1)] = 100,
) -> None:
    """One retention pass now: prune, purge and archive finished runs as the policy says.

    The policy comes from PAUSEPOINT_RETENTION_KEEP_CHECKPOINTS, PAUSEPOINT_RETENTION_DAYS,
    PAUSEPOINT_RETENTION_EVENTS_DAYS, PAUSEPOINT_RETENTION_WORKFLOWS and
    PAUSEPOINT_ARCHIVE_DIR. Waiting, running and held runs are never touched.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from pausepoint.persistence.retention import pending_purges
    from pausepoint.worker.app import create_app, runtime
    from pausepoint.worker.render import gc_table

    rt = runtime(create_app(settings()))
    policies = [rt.retention.default, *rt.retention.workflows.values()]
    unset = all(p.keep_checkpoints is None and p.delete_after_days is None for p in policies)
    # Purges an interrupted pass left half done are finished even with no policy now.
    if unset and not pending_purges(rt.store):
        console.print(
            "no retention policy is configured, so there is nothing to do; set "
            "PAUSEPOINT_RETENTION_KEEP_CHECKPOINTS, PAUSEPOINT_RETENTION_DAYS or "
            "PAUSEPOINT_RETENTION_WORKFLOWS",
            highlight=False,
        )
        return
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if not total:  # nothing to do in this phase: show it done, not pulsing
                done = total = 1
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        report = rt.gc(dry_run=dry_run, batch=batch, actor=default_actor(), progress=progress)
    console.print(gc_table(report, rt.retention.describe()))


# -------------------------------------------------------------------- waits


@cli.command()
@friendly
def waits() -> None:
    """List pending waits and their deadlines."""
    from rich.table import Table

    from pausepoint.persistence.records import PENDING
    from pausepoint.worker.render import ago, short, when

    store = open_store()
    table = Table(title="Pending waits", header_style="bold")
    for col in ("run", "kind", "for", "group", "deadline", "prompt"):
        table.add_column(col)
    for w in store.waits(status=PENDING):
        what = (w.event_name and f"{w.event_name}={w.match_key}") or w.resource or w.source or ""
        deadline = f"{when(w.deadline)} ({ago(w.deadline)})" if w.deadline else "-"
        table.add_row(
            w.run_id[:12],
            w.kind,
            Text(what),
            Text(w.approver_group or ""),
            deadline,
            Text(short(w.prompt, 50)),
        )
    console.print(table)


@cli.command()
@friendly
def callback(
    token: Annotated[str, typer.Argument(help="The token at the end of the callback URL.")],
    data: Annotated[str, typer.Option(help="The result, as a JSON value.")] = "{}",
) -> None:
    """Deliver a callback by hand (for scripts), the same way POST /callbacks/TOKEN does."""
    from pausepoint.worker.app import create_app, runtime

    payload = parse_json(data, "--data")
    rt = runtime(create_app(settings()))
    _, run = rt.deliver_callback(token, payload, actor=default_actor())
    if run is not None:
        console.print(Text.assemble("run ", (run.id, "bold"), f" resumed at step {run.step}"))
    else:
        console.print("stored: the run has not parked yet; it gets the callback when it does")


@cli.command()
@friendly
def event(
    name: Annotated[str, typer.Argument(help="The event's name, e.g. order.paid.")],
    key: Annotated[str, typer.Option(help="Runs waiting with this key resume.")],
    data: Annotated[str | None, typer.Option(help="More payload, as a JSON object.")] = None,
) -> None:
    """Publish an event, the same way POST /events/NAME does."""
    from pausepoint.worker.app import create_app, runtime

    payload = {**(parse_json_object(data, "--data") or {}), "key": key}
    resumed = runtime(create_app(settings())).publish_event(
        name, key, payload, actor=default_actor()
    )
    console.print(f"{len(resumed)} run(s) resumed")


@cli.command()
@friendly
def resource(
    name: Annotated[str, typer.Argument(help="The resource, e.g. llm-quota.")],
    slots: Annotated[int, typer.Option(help="How many runs may hold it at once.", min=0)],
) -> None:
    """Create a named capacity, or change its slots."""
    from pausepoint.worker.app import create_app, runtime

    rt = runtime(create_app(settings()))
    record = rt.store.set_resource(name, slots)
    for run in rt.store.wake_resources([name]):
        rt.publish(run)
    console.print(Text(f"{record.name}: {record.in_use}/{record.capacity} slots in use"))


@cli.command()
@friendly
def resources() -> None:
    """List named capacities and how much of each is in use."""
    for r in open_store().list_resources():
        console.print(Text(f"{r.name}: {r.in_use}/{r.capacity} slots in use"))


@cli.command()
@friendly
def api(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Serve the HTTP API and the approval page (uvicorn)."""
    import uvicorn

    from pausepoint.worker.api import create_api

    s = settings()
    Store.from_url(s.store_url).close()
    uvicorn.run(
        create_api(s),
        host=host or s.api_host,
        port=port or s.api_port,
        log_level=s.log_level.lower(),
        access_log=False,
    )


@cli.command()
@friendly
def flower(
    address: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5555,
) -> None:
    """Serve Flower (Redis/RabbitMQ broker), behind the login in FLOWER_BASIC_AUTH."""
    from pausepoint.worker.flower import run_flower

    run_flower(settings(), address, port)


# ----------------------------------------------------------------------- db


@db_cli.command("upgrade")
@friendly
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the schema migrations."""
    from pausepoint.persistence.engine import make_engine
    from pausepoint.persistence.migrate import upgrade

    engine = make_engine(settings().store_url)
    try:
        now = upgrade(engine, revision)
    finally:
        engine.dispose()
    console.print(f"store schema at revision [bold]{now}[/]")


@db_cli.command("current")
@friendly
def db_current() -> None:
    """Print the store's schema revision."""
    from pausepoint.persistence.engine import make_engine
    from pausepoint.persistence.migrate import current_revision, head_revision

    engine = make_engine(settings().store_url)
    try:
        now = current_revision(engine)
    finally:
        engine.dispose()
    console.print(f"current: {now or 'empty'}  head: {head_revision()}")


# --------------------------------------------------------------------- demo


@cli.command()
@friendly
def demo(
    directory: Annotated[
        str,
        typer.Option(
            "--dir",
            help="Where the demo keeps its databases: a new or empty folder, or an "
            "earlier demo's (only its own files are replaced).",
        ),
    ] = ".pausepoint-demo",
    applications: Annotated[int, typer.Option(help="Loan applications to run.", min=3, max=20)] = 5,
) -> None:
    """Run the loan demo on the embedded default: a real worker, pauses, approvals, a restart."""
    from pausepoint.worker.demo import run_demo

    sys.exit(run_demo(directory, applications, console))


# Command groups in their own modules (they use the helpers above).
from pausepoint.worker.cli_audit import audit_cli  # noqa: E402
from pausepoint.worker.cli_memory import memory_cli  # noqa: E402

cli.add_typer(audit_cli, name="audit")
cli.add_typer(memory_cli, name="memory")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cli()
