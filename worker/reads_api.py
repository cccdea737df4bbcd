"""The HTTP API's reads of one run, each bounded however long the run is.

    GET /runs/{id}                          the run, state, pending waits, latest page
                                            of its conversation and of its trail
    GET /runs/{id}/messages                 the conversation, a page (?at=SEQ: as then)
    GET /runs/{id}/events                   the trail, a page (or a whole export)
    GET /runs/{id}/checkpoints              the timeline, a page
    GET /runs/{id}/checkpoints/{seq}        one checkpoint as it was

The three lists page with cursors on the items' numbers: ``?after=N`` (the first
``limit`` numbered above N), ``?before=N`` (the last ``limit`` below N), neither (the
first page). The body stays a JSON list, as before paging; the total is in
``X-Total-Count`` and the other pages in an RFC 8288 ``Link`` header (``first``,
``prev``, ``next``, ``last``). Messages count from 0, events from 1, checkpoints by seq.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from pausepoint.persistence.audit import to_csv, to_jsonl
from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.jsonvalues import MAX_SEQ
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.api import Caller
from pausepoint.worker.pages import (
    MAX_PAGE,
    PAGE,
    checkpoint_view,
    run_detail,
    timeline_entries,
)
from pausepoint.worker.serialize import message_json, plain

EVENT_FORMATS = ("json", "jsonl", "csv")

After = Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="Items numbered above this one.")]
Before = Annotated[
    int | None, Query(ge=0, le=MAX_SEQ, description="Items numbered below this one.")
]
Limit = Annotated[
    int | None, Query(ge=1, le=MAX_PAGE, description=f"Items per page (default {PAGE}).")
]


def one_cursor(after: int | None, before: int | None) -> None:
    if after is not None and before is not None:
        raise InvalidInput("give one cursor, after or before, not both")


def paged(
    request: Request,
    items: list[dict[str, Any]],
    *,
    total: int,
    before: int | None,
    after: int | None,
    last: int,
    limit: int,
) -> JSONResponse:
    """``items`` as a JSON list, with ``X-Total-Count`` and a ``Link`` header: ``first``,
    ``prev`` (``?before=before``, when there are earlier items), ``next``
    (``?after=after``, when there are later ones) and ``last`` (``?before=last``)."""
    base = request.url.remove_query_params(["after", "before", "limit"])

    def link(rel: str, **cursor: int) -> str:
        return f'<{base.include_query_params(**cursor, limit=limit)}>; rel="{rel}"'

    links = [link("first")]
    if before is not None:
        links.append(link("prev", before=before))
    if after is not None:
        links.append(link("next", after=after))
    links.append(link("last", before=last))
    return JSONResponse(items, headers={"Link": ", ".join(links), "X-Total-Count": str(total)})


def add_read_routes(api: FastAPI, rt: Runtime) -> None:
    store = rt.store

    @api.get("/runs/{run_id}", tags=["producers"])
    def get_run(run_id: str, caller: Caller) -> dict[str, Any]:
        """A run with its state and pending waits, and the latest 50 messages (`history`)
        and events (`events`); `history_page` and `events_page` give the totals and the
        request for the earlier ones (`href`)."""
        return run_detail(store, run_id)

    @api.get("/runs/{run_id}/messages", tags=["producers"], response_model=None)
    def run_messages(
        run_id: str,
        request: Request,
        caller: Caller,
        after: After = None,
        before: Before = None,
        limit: Limit = None,
        at: Annotated[
            int | None, Query(ge=0, le=MAX_SEQ, description="As of checkpoint `at`.")
        ] = None,
    ) -> Response:
        """The run's conversation, a page: messages numbered from 0, in order."""
        one_cursor(after, before)
        size = limit or PAGE
        page, total = store.messages_page(run_id, after=after, before=before, limit=size, at=at)
        return paged(
            request,
            [message_json(m) for m in page],
            total=total,
            before=page[0].idx if page and page[0].idx > 0 else None,
            after=page[-1].idx if page and page[-1].idx < total - 1 else None,
            last=total,
            limit=size,
        )

    @api.get("/runs/{run_id}/events", tags=["auditors"], response_model=None)
    def run_events(
        run_id: str,
        request: Request,
        caller: Caller,
        fmt: Annotated[str, Query(alias="format", description="json, jsonl or csv")] = "json",
        after: After = None,
        before: Before = None,
        limit: Limit = None,
    ) -> Response:
        """The run's audit trail: a page of a JSON list (events numbered from 1), or an
        export of all of it with every event's hash (`jsonl`: one canonical JSON object a
        line; `csv`: a header and a row an event), streamed from the store in batches."""
        if fmt not in EVENT_FORMATS:
            raise InvalidInput(f"unknown format {fmt!r}; one of: {', '.join(EVENT_FORMATS)}")
        one_cursor(after, before)
        if fmt != "json":
            if (after, before, limit) != (None, None, None):
                raise InvalidInput(
                    f"the {fmt} export is the whole trail: after, before and limit page "
                    "the json format"
                )
            trail = store.iter_events(run_id)
            if fmt == "jsonl":
                return StreamingResponse(
                    _chunked(to_jsonl(trail)),
                    media_type="application/x-ndjson",
                    headers=_attachment(f"run-{run_id}-events.jsonl"),
                )
            return StreamingResponse(
                _chunked(to_csv(trail)),
                media_type="text/csv; charset=utf-8",
                headers=_attachment(f"run-{run_id}-events.csv"),
            )
        size = limit or PAGE
        page = store.events_page(run_id, after=after, before=before, limit=size)
        total = store.get_run(run_id).event_count
        return paged(
            request,
            [plain(e) for e in page],
            total=total,
            before=page[0].n if page and page[0].n > 1 else None,
            after=page[-1].n if page and page[-1].n < total else None,
            last=total + 1,
            limit=size,
        )

    @api.get("/runs/{run_id}/checkpoints", tags=["auditors"], response_model=None)
    def checkpoints(
        run_id: str,
        request: Request,
        caller: Caller,
        after: After = None,
        before: Before = None,
        limit: Limit = None,
    ) -> Response:
        """The run's checkpoints in order, a page: step, messages, changed state keys, the
        events that led to each."""
        one_cursor(after, before)
        size = limit or PAGE
        rows = store.timeline_rows(run_id, after=after, before=before, limit=size)
        page = timeline_entries(rows)
        # Not seq > 0: retention may have pruned the first checkpoints.
        earlier = bool(page) and rows.previous is not None
        return paged(
            request,
            page,
            total=rows.total,
            before=page[0]["seq"] if earlier else None,
            # The run's latest checkpoint is its last (retention never prunes it).
            after=page[-1]["seq"] if page and page[-1]["seq"] < rows.run.seq else None,
            last=rows.run.seq + 1,
            limit=size,
        )

    @api.get("/runs/{run_id}/checkpoints/{seq}", tags=["auditors"])
    def checkpoint(
        run_id: str, seq: Annotated[int, Path(ge=0, le=MAX_SEQ)], caller: Caller
    ) -> dict[str, Any]:
        """Checkpoint `seq` as it was: state, the latest 50 messages of its conversation
        (`history_page` for the rest), and what changed since the checkpoint before (the
        first 50 messages it added; `messages_added_page` for the rest)."""
        return checkpoint_view(store, run_id, seq)


# Bytes of an export sent at a time: a chunk a line would cost a thread hop a line.
CHUNK = 64 * 1024


def _chunked(lines: Iterator[str], size: int = CHUNK) -> Iterator[str]:
    part: list[str] = []
    held = 0
    for line in lines:
        part.append(line)
        held += len(line)
        if held >= size:
            yield "".join(part)
            part, held = [], 0
    if part:
        yield "".join(part)


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}
