"""Reads of one big run are bounded: the run's detail shows the latest page of its
conversation and trail with cursors to the rest, the list endpoints page by number
(``after`` / ``before`` / ``limit``, a ``Link`` header and ``X-Total-Count``), and
`pausepoint show` / `history` print the tail unless asked for ``--all``.

Pages walked to the end must give exactly what the store holds, in order, each item
once. The run here has 60 steps (121 messages, 61 checkpoints and more than 50 events),
enough to need pages of every kind; bench/reads.py measures one of 20,000 messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from pausepoint.tasks import examples  # noqa: F401  (registers turns)
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.pages import TAIL, whole_timeline
from pausepoint.worker.serialize import message_json, plain
from tests.unit.test_api_audit import Env, open_env
from tests.unit.test_cli_audit import Home, drive
from tests.unit.test_cli_audit import home as home

STEPS = 60


@pytest.fixture
def env(sqlite_url: str) -> Iterator[Env]:
    with open_env(sqlite_url) as e:
        yield e


@pytest.fixture
def run_id(env: Env) -> str:
    run = env.rt.start("turns", agent="loan_processor", task="chat", input={"steps": STEPS})
    while env.drain():
        pass
    assert env.store.get_run(run.id).status == "completed"
    return run.id


def links(header: str) -> dict[str, str]:
    return {rel: url for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', header)}


def walk(env: Env, first: str, rel: str) -> tuple[list[dict], list[int]]:  # type: ignore[type-arg]
    """Every item from ``first`` on, following ``rel`` links; and each page's size."""
    items: list[dict] = []  # type: ignore[type-arg]
    sizes = []
    url: str | None = first
    while url is not None:
        r = env.get(url.replace("http://testserver", ""))
        page = env.ok(r)
        items.extend(page)
        sizes.append(len(page))
        url = links(r.headers["link"]).get(rel)
        assert len(sizes) < 100, "pages never end"
    return items, sizes


def test_the_run_detail_is_the_latest_page_with_cursors(env: Env, run_id: str) -> None:
    run = env.store.get_run(run_id)
    assert run.history_len > TAIL and run.event_count > TAIL
    body = env.ok(env.get(f"/runs/{run_id}"))
    everything = [message_json(m) for m in env.store.history(run_id, stop=run.history_len)]
    assert body["history"] == everything[-TAIL:]
    page = body["history_page"]
    assert page["total"] == run.history_len
    assert (page["start"], page["stop"]) == (run.history_len - TAIL, run.history_len)
    assert page["before"] == run.history_len - TAIL
    assert page["href"] == f"/runs/{run_id}/messages?before={run.history_len - TAIL}"

    trail = [plain(e) for e in env.store.events(run_id)]
    assert body["events"] == trail[-TAIL:]
    events_page = body["events_page"]
    assert events_page["total"] == run.event_count == len(trail)
    assert events_page["before"] == trail[-TAIL]["n"]
    # The earlier items are where the cursor says, and end where the page begins.
    # (httpx's params would replace the href's query, so the limit joins it.)
    earlier = env.ok(env.get(page["href"] + "&limit=1000"))
    assert earlier + body["history"] == everything
    earlier_events = env.ok(env.get(events_page["href"] + "&limit=1000"))
    assert earlier_events + body["events"] == trail


def test_messages_page_forward_and_back(env: Env, run_id: str) -> None:
    run = env.store.get_run(run_id)
    everything = [message_json(m) for m in env.store.history(run_id, stop=run.history_len)]
    r = env.get(f"/runs/{run_id}/messages", params={"limit": 25})
    assert r.headers["x-total-count"] == str(run.history_len)
    assert set(links(r.headers["link"])) == {"first", "next", "last"}
    forward, sizes = walk(env, f"/runs/{run_id}/messages?limit=25", "next")
    assert forward == everything
    assert max(sizes) == 25
    backward, _ = walk(env, links(r.headers["link"])["last"], "prev")
    # Walked from the end, the pages come newest first, each in order.
    assert sorted(backward, key=lambda m: m["idx"]) == everything
    assert len(backward) == len(everything)
    # The default page is 100 messages, the most a page gives 1000.
    assert len(env.ok(env.get(f"/runs/{run_id}/messages"))) == 100
    # As of an earlier checkpoint: its conversation only.
    cp = env.store.checkpoint(run_id, 10)
    at = env.ok(env.get(f"/runs/{run_id}/messages", params={"at": 10, "limit": 1000}))
    assert len(at) == cp.history_len < run.history_len
    assert at == everything[: cp.history_len]


def test_events_and_checkpoints_page_to_the_whole(env: Env, run_id: str) -> None:
    trail = [plain(e) for e in env.store.events(run_id)]
    forward, sizes = walk(env, f"/runs/{run_id}/events?limit=30", "next")
    assert forward == trail and max(sizes) == 30
    r = env.get(f"/runs/{run_id}/events", params={"after": 5, "limit": 3})
    assert [e["n"] for e in env.ok(r)] == [6, 7, 8]
    assert r.headers["x-total-count"] == str(len(trail))

    whole = json.loads(json.dumps(whole_timeline(env.store, run_id), default=str))
    assert len(whole) == STEPS + 1
    pages, _ = walk(env, f"/runs/{run_id}/checkpoints?limit=20", "next")
    assert pages == whole
    last = env.get(f"/runs/{run_id}/checkpoints", params={"before": STEPS + 1, "limit": 20})
    assert env.ok(last) == whole[-20:]
    assert links(last.headers["link"]).get("prev")
    assert env.ok(env.get(f"/runs/{run_id}/checkpoints/{STEPS}"))["seq"] == STEPS


@pytest.mark.parametrize("what", ["messages", "events", "checkpoints"])
def test_bad_cursors_are_refused(env: Env, run_id: str, what: str) -> None:
    env.refused(
        lambda: env.get(f"/runs/{run_id}/{what}", params={"after": 1, "before": 5}),
        422,
        says="one cursor",
    )
    for params in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"before": "x"}):
        env.refused(lambda p=params: env.get(f"/runs/{run_id}/{what}", params=p), 422)
    env.refused(lambda: env.get(f"/runs/{'0' * 32}/{what}"), 404)


def test_the_cli_shows_the_tail_unless_asked_for_all(home: Home) -> None:
    with home.store() as store:
        rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None)
        run = rt.start("turns", agent="A", task="chat", input={"steps": STEPS})
        drive(store, run.id)
        total = store.get_run(run.id).history_len
        checkpoints = store.count_checkpoints(run.id)
    shown = json.loads(home.ok("show", run.id, "--json").out)
    assert len(shown["history"]) == TAIL and len(shown["events"]) == TAIL
    assert shown["history_page"]["before"] == total - TAIL
    everything = json.loads(home.ok("show", run.id, "--json", "--all").out)
    assert len(everything["history"]) == total
    assert everything["history_page"]["before"] is None

    text = home.ok("show", run.id).out
    assert f"{total - TAIL} earlier messages" in text, text[-2000:]
    assert "earlier messages" not in home.ok("show", run.id, "--all").out

    history = json.loads(home.ok("history", run.id, "--json").out)
    assert len(history["checkpoints"]) == TAIL
    assert history["checkpoints_page"]["total"] == checkpoints
    assert history["checkpoints"][-1]["seq"] == STEPS
    whole = json.loads(home.ok("history", run.id, "--json", "--all").out)
    assert [c["seq"] for c in whole["checkpoints"]] == list(range(STEPS + 1))
    assert whole["checkpoints"][-TAIL:] == history["checkpoints"]
    assert f"{checkpoints - TAIL} earlier checkpoints" in home.ok("history", run.id).out
