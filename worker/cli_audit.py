"""``pausepoint audit ...``: verify trails (a run, the store, archives, against anchors),
write anchors, export trails, make a key."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.store import Store
from pausepoint.persistence.store.trail import StoreAudit
from pausepoint.persistence.trail import RunAudit
from pausepoint.worker import cli as base
from pausepoint.worker.cli import friendly, open_store, settings

audit_cli = typer.Typer(
    help="Audit trails: verify them (keyed chains, the state they bind, the ledger, "
    "anchors), anchor the ledger outside the store, export trails.",
    no_args_is_help=True,
)


class ExportFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"


AsJson = Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")]


@audit_cli.command("verify")
@friendly
def audit_verify(
    run_id: Annotated[
        str | None, typer.Argument(help="The run to check (default: the whole store).")
    ] = None,
    archive: Annotated[
        Path | None,
        typer.Option(
            "--archive",
            help="Check an archive file written by retention (or every *.jsonl under a "
            "directory) instead of the store, and against the store's ledger.",
            metavar="FILE",
        ),
    ] = None,
    anchors: Annotated[
        Path | None,
        typer.Option(
            "--anchors",
            help="Also check the store against this anchor file (`audit anchor`): finds "
            "anything removed or changed since each anchor.",
            metavar="FILE",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Check trails and what they bind; exit 1 when anything was tampered with."""
    store = open_store()
    if archive is not None:
        if run_id is not None:
            raise InvalidInput("give a run or --archive, not both")
        _report_findings(_verify_archives(archive, store), "archive file")
        return
    if run_id is not None:
        if anchors is not None:
            raise InvalidInput("--anchors checks the whole store: give no run")
        audit = store.audit(store.resolve_run_id(run_id))
        if as_json:
            print(json.dumps(audit.as_json(), ensure_ascii=False))
        else:
            _print_run(audit, store)
        if not audit.ok:
            raise typer.Exit(1)
        return
    report = _audit_store(store)
    anchor_problems = _check_anchors(store, anchors) if anchors is not None else None
    if as_json:
        print(json.dumps(store_json(report, anchor_problems, store), ensure_ascii=False))
    else:
        _print_store(report, anchor_problems, store)
    if not report.ok or anchor_problems:
        raise typer.Exit(1)


def store_json(
    report: StoreAudit, anchor_problems: list[str] | None, store: Store
) -> dict[str, Any]:
    led = report.ledger
    return {
        "ok": report.ok and not anchor_problems,
        "runs": len(report.runs),
        "failed": [r.as_json() for r in report.failed],
        "missing": [{"run_id": f.run_id, "problem": f.problem} for f in report.missing],
        "ledger": {
            "sealed": led.sealed,
            "unsealed": led.unsealed,
            "keyed": led.keyed,
            "unkeyed": led.unkeyed,
            "problems": led.problems,
        },
        "anchors": None if anchor_problems is None else {"problems": anchor_problems},
        "unkeyed_runs": sum(1 for r in report.runs if r.verdict.unkeyed),
        "key_ids": store.audit_keys.ids,
        "proves": proves(report, anchor_problems is not None, store),
    }


def proves(report: StoreAudit | None, anchored: bool, store: Store) -> list[str]:
    """What a clean verdict proves, and against whom, in words."""
    keys = store.audit_keys
    out = []
    unkeyed = report is not None and any(r.verdict.unkeyed for r in report.runs)
    if keys:
        out.append(
            f"keyed runs: no event, checkpoint, message, decision or result was changed, "
            f"added or removed by anyone without the audit key ({', '.join(keys.ids)}), "
            "including whoever can write the database"
        )
    if not keys or unkeyed:
        out.append(
            "unkeyed runs (no PAUSEPOINT_AUDIT_KEY when written"
            + ("" if keys else ", or none given now")
            + "): proven only against whoever cannot write the store; anyone who can could "
            "recompute their hashes"
        )
    if anchored:
        out.append(
            "since each anchor: no run was deleted, cut back or rewritten, and no "
            "ledger entry removed"
        )
    else:
        out.append(
            "without --anchors: a run deleted together with its ledger entries at the "
            "ledger's unsealed tail, or a live run cut back to an earlier point with all its "
            "rows, cannot be told from a store that never had them"
        )
    return out


def _audit_store(store: Store) -> StoreAudit:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        console=base.err,
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=store.count_runs())
        return store.audit_store(progress=lambda n: bar.advance(task, n))


def _check_anchors(store: Store, path: Path) -> list[str]:
    from pausepoint.persistence.anchors import check_anchors, read_anchors

    found, problems = read_anchors(path, store.audit_keys)
    if not found and not problems:
        raise InvalidInput(f"{path} holds no anchors")
    return problems + check_anchors(store, found)


def _print_run(audit: RunAudit, store: Store) -> None:
    for finding in audit.findings:
        _print_finding(str(finding))
    if audit.ok:
        v = audit.verdict
        how = (
            f"keyed with {', '.join(sorted(v.key_ids))}"
            if v.keyed and not v.unkeyed
            else "unkeyed: proven only against whoever cannot write the store"
            if not v.keyed
            else f"{v.unkeyed} unkeyed events, then keyed with {', '.join(sorted(v.key_ids))}"
        )
        state = "" if audit.binds_state else "; its state predates state digests"
        base.console.print(
            f"ok: run {audit.run_id} verified ({audit.events} events, {how}{state})",
            highlight=False,
            soft_wrap=True,
        )


def _print_store(report: StoreAudit, anchor_problems: list[str] | None, store: Store) -> None:
    for problem in report.ledger.problems:
        _print_finding(f"ledger: {problem}")
    for missing in report.missing:
        _print_finding(f"run {missing.run_id}: {missing.problem}")
    for audit in report.failed:
        for finding in audit.findings:
            _print_finding(str(finding))
    for problem in anchor_problems or ():
        _print_finding(f"anchors: {problem}")
    good = len(report.runs) - len(report.failed)
    led = report.ledger
    summary = (
        f"{'ok' if report.ok and not anchor_problems else 'FAILED'}: {good} "
        f"run{'' if good == 1 else 's'} verified"
    )
    if report.failed:
        summary += f"; {len(report.failed)} failed"
    if report.missing:
        summary += f"; {len(report.missing)} deleted"
    summary += f"; ledger: {led.sealed} entries sealed"
    if led.problems:
        summary += f", {len(led.problems)} problems"
    if anchor_problems is not None:
        summary += f"; anchors: {len(anchor_problems)} problems"
    base.console.print(summary, highlight=False, soft_wrap=True)
    if not report.ok or anchor_problems:
        return  # what a clean verdict proves says nothing about a failed one
    for line in proves(report, anchor_problems is not None, store):
        base.console.print(
            Text(f"  proves: {line}" if "without" not in line[:8] else f"  {line}"), soft_wrap=True
        )


def _against_ledger(store: Store, file: Path, run_id: str) -> str | None:
    """An archive file against the ledger's entry for it: the same bytes, the same trail."""
    entries = store.ledger_entries(run_id)
    if entries.archived is None:
        return f"run {run_id}: the store's ledger has no archive entry for it"
    want = str(entries.archived.data.get("sha256", ""))
    if hashlib.sha256(file.read_bytes()).hexdigest() != want:
        return (
            f"run {run_id}: the file is not the one the ledger recorded when the trail was "
            "archived: it was edited or replaced"
        )
    return None


def _verify_archives(path: Path, store: Store) -> list[tuple[str, str | None]]:
    from pausepoint.persistence.audit import ExportedEvent, verify_chain
    from pausepoint.persistence.retention import read_archive

    if path.is_dir():
        files = sorted(path.rglob("*.jsonl"))
        if not files:
            raise InvalidInput(f"no archive files (*.jsonl) under {path}")
    elif path.is_file():
        files = [path]
    else:
        raise InvalidInput(f"no such archive file: {path}")
    results: list[tuple[str, str | None]] = []
    for file in files:
        try:
            header, records = read_archive(file)
            run_id = str(header["run_id"])
            count, head = int(header["event_count"]), str(header["event_hash"])
            events = [ExportedEvent.from_record(r) for r in records]
        except UnicodeDecodeError:
            raise InvalidInput(f"{file} is not a text file") from None
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{file} is not JSON lines ({exc.msg} on line {exc.lineno})"
            ) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(
                f"{file} is not a Pausepoint archive (a run header line, then events): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finding = verify_chain(run_id, events, count, head, store.audit_keys)
        problem = str(finding) if finding is not None else _against_ledger(store, file, run_id)
        results.append((str(file), None if problem is None else f"{file}: {problem}"))
    return results


def _print_finding(text: str) -> None:
    base.console.print(
        Text.assemble(("FAILED ", "bold red"), text), soft_wrap=True, highlight=False
    )


def _report_findings(results: list[tuple[str, str | None]], what: str) -> None:
    bad = [finding for _, finding in results if finding is not None]
    for finding in bad:
        _print_finding(finding)
    good = len(results) - len(bad)
    summary = f"ok: {good} {what}{'' if good == 1 else 's'} verified"
    if bad:
        summary += f"; {len(bad)} failed"
    base.console.print(summary, highlight=False)
    if bad:
        raise typer.Exit(1)


@audit_cli.command("anchor")
@friendly
def audit_anchor(
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            help="The anchor file to append to (default: PAUSEPOINT_AUDIT_ANCHORS, or "
            "<archive dir>/anchors.jsonl).",
            metavar="FILE",
        ),
    ] = None,
) -> None:
    """Seal the ledger and append its head, and the heads of the runs changed since the
    last anchor, to an anchor file outside the store."""
    from pausepoint.persistence.anchors import write_anchor

    store = open_store()
    path = to or settings().anchors_path()
    try:
        anchor = write_anchor(store, path)
    except OSError as exc:
        raise InvalidInput(f"cannot write the anchor file {path}: {exc.strerror or exc}") from None
    keyed = f"MAC'd with key {anchor.key}" if anchor.key else "unkeyed (no audit key)"
    base.console.print(
        Text(
            f"anchored the ledger at {anchor.ledger_n} entries and {len(anchor.runs)} runs "
            f"to {path} ({keyed})"
        ),
        soft_wrap=True,
    )


@audit_cli.command("keygen")
def audit_keygen() -> None:
    """Print a new random audit key (put it in PAUSEPOINT_AUDIT_KEY, first, to rotate)."""
    from pausepoint.persistence.audit_keys import new_key

    print(new_key())


@audit_cli.command("export")
@friendly
def audit_export(
    run_id: Annotated[str, typer.Argument(help="The run whose trail to export.")],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl (one event a line) or csv.")
    ] = ExportFormat.jsonl,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write a run's audit trail for auditors: every event with its hashes, so anyone can
    recompute the chain."""
    from pausepoint.persistence.audit import to_csv, to_jsonl

    store = open_store()
    run_id = store.resolve_run_id(run_id)
    events = store.events(run_id)
    chunks = to_jsonl(events) if fmt is ExportFormat.jsonl else to_csv(events)
    if output is None:
        try:
            for chunk in chunks:
                sys.stdout.write(chunk)
            sys.stdout.flush()
        except BrokenPipeError:
            # `| head`: the reader has what it wanted. Keep Python's exit flush quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        with output.open("w", encoding="utf-8", newline="") as f:
            for chunk in chunks:
                f.write(chunk)
    except OSError as exc:
        raise InvalidInput(f"cannot write {output}: {exc.strerror or exc}") from None
    base.console.print(
        Text(f"wrote {len(events)} events of run {run_id} to {output} ({fmt.value})")
    )
