"""An agent's long-term memory, the same on SQLite (FTS5) and Postgres (tsvector):
recall by relevance, subjects, knowledge updates, writes in the step's commit, rollback,
fork, retention and erasure."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text

from pausepoint.persistence.errors import InvalidInput, NotFound
from pausepoint.persistence.records import COMPLETED, WAITING, NewMemory
from pausepoint.persistence.retention import Retention, RetentionPolicy, collect
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import memories
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Next, Outcome, Registry, Wait, Workflow

FACTS = [
    ("alice", "city", "Alice lives in Lisbon and works as a nurse."),
    ("alice", "pet", "Alice has a grey cat called Miso."),
    ("bob", "city", "Bob moved to Oslo for a job at the harbour."),
    ("bob", "car", "Bob drives an old red Volvo."),
    (None, None, "The loan desk closes at five on Fridays."),
]


def seed(store: Store, agent: str = "helper") -> None:
    store.save_agent(agent, persona="I help.")
    for subject, key, content in FACTS:
        store.remember(agent, NewMemory(content, subject=subject, key=key), actor="test")


def contents(found: list[Any]) -> list[str]:
    return [r.memory.content for r in found]


def test_recall_finds_by_relevance_with_stemming(store: Store) -> None:
    seed(store)
    found = store.recall("helper", "Which cats does Alice have?")
    assert contents(found)[0] == "Alice has a grey cat called Miso."
    assert found[0].relevance == 1.0 and found[0].score > found[-1].score
    assert contents(store.recall("helper", "driving a Volvo"))[0] == "Bob drives an old red Volvo."
    # Nothing shares a word with the query: nothing is recalled.
    assert store.recall("helper", "quantum chromodynamics") == []


def test_a_subject_sees_its_own_and_general_memories_only(store: Store) -> None:
    seed(store)
    found = contents(store.recall("helper", "city lives moved loan desk", subject="alice"))
    assert "Alice lives in Lisbon and works as a nurse." in found
    assert "The loan desk closes at five on Fridays." in found
    assert not any("Bob" in c for c in found)


def test_another_agents_memories_are_never_recalled(store: Store) -> None:
    seed(store, "helper")
    store.save_agent("helper two", persona="other")
    store.remember("helper two", NewMemory("Alice secretly owns a cat farm"), actor="t")
    assert all(r.memory.agent_name == "helper" for r in store.recall("helper", "Alice cat"))
    assert contents(store.recall("helper two", "Alice cat")) == ["Alice secretly owns a cat farm"]


@pytest.mark.parametrize(
    "query",
    ['"', "'; DROP TABLE memories; --", "NEAR(a b)", "cat AND OR NOT", "a:b", "*", "日本 猫", ""],
)
def test_any_query_text_is_searched_as_words_never_as_syntax(store: Store, query: str) -> None:
    seed(store)
    store.remember("helper", NewMemory("日本 の 猫 は かわいい"), actor="t")
    store.recall("helper", query)  # no error
    assert store.recall("helper", "cat AND OR NOT")[0].memory.content.startswith("Alice has")


def test_a_newer_memory_with_the_same_key_supersedes_the_older(store: Store) -> None:
    seed(store)
    store.remember(
        "helper",
        NewMemory("Alice moved from Lisbon to Porto.", subject="alice", key="city"),
        actor="t",
    )
    found = contents(store.recall("helper", "Where does Alice live? Lisbon Porto", subject="alice"))
    assert found[0] == "Alice moved from Lisbon to Porto."
    assert "Alice lives in Lisbon and works as a nurse." not in found
    everything = store.memories("helper", subject="alice", include_superseded=True)
    old = next(m for m in everything if m.content.startswith("Alice lives"))
    assert not old.current and old.superseded_by == everything[0].id
    assert old.id not in [m.id for m in store.memories("helper", subject="alice")]


def test_a_memory_can_name_the_one_it_replaces(store: Store) -> None:
    seed(store)
    old = next(m for m in store.memories("helper") if m.content.startswith("The loan desk"))
    new = store.remember(
        "helper", NewMemory("The loan desk now closes at six.", supersedes=old.id), actor="t"
    )
    assert contents(store.recall("helper", "when does the loan desk close")) == [new.content]
    assert store.memory(old.id).superseded_by == new.id  # type: ignore[union-attr]
    for bad in (old.id, 10_000):  # no longer current; not there at all
        with pytest.raises(InvalidInput, match="not a current memory"):
            store.remember("helper", NewMemory("x", supersedes=bad), actor="t")
    store.save_agent("other", persona="")
    with pytest.raises(InvalidInput):  # another agent's memory
        store.remember("other", NewMemory("x", supersedes=new.id), actor="t")
    assert store.memory(new.id).current  # type: ignore[union-attr]


def test_memories_page_newest_first(store: Store) -> None:
    store.save_agent("pager", persona="")
    for i in range(25):
        store.remember("pager", NewMemory(f"fact number {i}"), actor="t")
    seen: list[int] = []
    before = None
    while True:
        page = store.memories("pager", limit=10, before=before)
        seen.extend(m.id for m in page)
        if len(page) < 10:
            break
        before = page[-1].id
    assert len(seen) == 25 and seen == sorted(seen, reverse=True)
    with pytest.raises(InvalidInput):
        store.memories("pager", limit=0)


@pytest.mark.parametrize(
    "bad",
    [
        NewMemory(""),
        NewMemory("x", kind="gossip"),
        NewMemory("x", importance=2),
        NewMemory("x", subject=""),
        NewMemory("x" * 20_001),
    ],
)
def test_bad_memories_are_refused_and_nothing_is_written(store: Store, bad: NewMemory) -> None:
    store.save_agent("strict", persona="")
    with pytest.raises(InvalidInput):
        store.remember("strict", bad, actor="t")
    assert store.memories("strict", include_superseded=True) == []
    with pytest.raises(NotFound):
        store.remember("nobody", NewMemory("x"), actor="t")


def test_forget_erases_a_subjects_memories_and_records_it(store: Store) -> None:
    seed(store)
    assert store.forget("helper", "alice", actor="dpo", reason="erasure request") == 2
    assert store.recall("helper", "Alice cat Lisbon nurse Miso") == []
    with store.read() as conn:
        left = conn.execute(
            select(func.count()).select_from(memories).where(memories.c.content.like("%Alice%"))
        ).scalar_one()
    assert left == 0
    (erasure,) = store.erasures("helper")
    assert (erasure["subject"], erasure["count"], erasure["actor"]) == ("alice", 2, "dpo")
    assert len(store.memories("helper")) == 3
    if store.engine.dialect.name == "sqlite":
        with store.read() as conn:  # and the full-text index holds none of its words
            hits = conn.execute(
                text("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'miso'")
            ).scalar_one()
        assert hits == 0


# ------------------------------------------------------------ within runs


def memo_workflows() -> Registry:
    reg = Registry()
    wf = Workflow("memo", registry=reg)

    @wf.step
    def learn(ctx: StepContext) -> Outcome:
        ctx.remember(f"{ctx.input['who']} prefers {ctx.input['channel']}", key="channel")
        return Next("confirm")

    @wf.step
    def confirm(ctx: StepContext) -> Outcome:
        ctx.state["recalled"] = [r.memory.content for r in ctx.recall("prefers channel")]
        return Wait.approval("done", prompt="ok?")

    @wf.step
    def done(ctx: StepContext) -> Outcome:
        return End({"recalled": ctx.state["recalled"]})

    return reg


class Runs:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.published: list[tuple[str, int]] = []
        self.rt = Runtime(
            store,
            llm=ScriptedBackend(default="ok"),
            publish=lambda r, v: self.published.append((r, v)),
            workflows=memo_workflows(),
        )

    def drain(self) -> None:
        while self.published:
            self.rt.run_step(*self.published.pop(0), owner="w")

    def start(self, **input: Any) -> str:
        run = self.rt.start("memo", agent="desk", input=input)
        self.drain()
        return run.id


def test_memories_are_written_with_the_step_and_rolled_back_with_it(store: Store) -> None:
    store.save_agent("desk", persona="")
    runs = Runs(store)
    first = runs.start(who="carol", channel="email", subject="carol")
    second = runs.start(who="carol", channel="phone", subject="carol")
    assert store.get_run(second).status == WAITING
    current = store.memories("desk", subject="carol")
    assert [m.content for m in current] == ["carol prefers phone"]
    assert current[0].run_id == second and current[0].seq == 1
    assert store.checkpoint(second).state["recalled"] == ["carol prefers phone"]
    kinds = [e.kind for e in store.events(second)]
    assert kinds.count("remembered") == 1

    # Rolling the second run back past the step that remembered retracts its memory,
    # and the first run's is current again.
    store.rollback(second, 0, actor="admin", reason="wrong channel")
    assert [m.content for m in store.memories("desk", subject="carol")] == ["carol prefers email"]
    retracted = [m for m in store.memories("desk", include_superseded=True) if m.retracted_at]
    assert [m.content for m in retracted] == ["carol prefers phone"]
    trail = store.events(second)
    retraction = next(e for e in trail if e.kind == "memories_retracted")
    assert retraction.data["memories"] == [retracted[0].id]
    assert store.verify(second) is None and store.verify(first) is None


def test_a_fork_shares_the_agents_memories(store: Store) -> None:
    store.save_agent("desk", persona="")
    runs = Runs(store)
    parent = runs.start(who="dan", channel="fax", subject="dan")
    child = runs.rt.fork(parent, 1, actor="admin")
    runs.drain()
    assert store.get_run(child.id).status == WAITING
    # The fork re-ran no step that remembers: still one memory, shared by both runs.
    assert len(store.memories("desk", include_superseded=True)) == 1
    assert store.checkpoint(child.id).state["recalled"] == ["dan prefers fax"]


def test_retention_prunes_old_and_superseded_memories(store: Store) -> None:
    seed(store)
    now = store.clock()
    with store.write() as conn:
        conn.execute(
            memories.update()
            .where(memories.c.subject == "bob")
            .values(created_at=now - timedelta(days=400))
        )
    store.remember(
        "helper", NewMemory("Alice lives in Porto now.", subject="alice", key="city"), actor="t"
    )
    with store.write() as conn:
        conn.execute(
            memories.update()
            .where(memories.c.superseded_by.isnot(None))
            .values(created_at=now - timedelta(days=40))
        )
    dry = collect(store, Retention(RetentionPolicy(), memory_days=365), dry_run=True)
    assert dry.memories_removed == 2 and len(store.memories("helper")) == 5
    report = collect(
        store,
        Retention(RetentionPolicy(), memory_days=365, superseded_memory_days=30),
        vacuum=False,
    )
    assert report.memories_removed == 3  # Bob's two, Alice's superseded city
    left = {m.content for m in store.memories("helper", include_superseded=True)}
    assert left == {
        "Alice has a grey cat called Miso.",
        "The loan desk closes at five on Fridays.",
        "Alice lives in Porto now.",
    }


def test_episodes_are_written_when_a_run_ends_if_the_agent_wants_them(store: Store) -> None:
    store.save_agent("desk", persona="", model={"memory": {"episodes": True}})
    runs = Runs(store)
    run_id = runs.start(who="erin", channel="post", subject="erin")
    runs.rt.decide(run_id, approved=True, actor="boss")
    runs.drain()
    assert store.get_run(run_id).status == COMPLETED
    episodes = store.memories("desk", kind="episode")
    assert len(episodes) == 1 and episodes[0].run_id == run_id
    assert episodes[0].subject == "erin" and episodes[0].content
    # The episode call is not part of the run's conversation.
    assert all("episode summary" not in m.content for m in store.history(run_id))


def test_recall_scores_recency_and_importance_between_equally_relevant_ones(store: Store) -> None:
    store.save_agent("ranker", persona="")
    old = store.remember("ranker", NewMemory("the printer code is 42"), actor="t")
    with store.write() as conn:
        conn.execute(
            memories.update()
            .where(memories.c.id == old.id)
            .values(created_at=datetime.now(timezone.utc) - timedelta(days=90))
        )
    store.remember("ranker", NewMemory("the printer code is 42"), actor="t")
    store.remember("ranker", NewMemory("the printer code is 42", importance=1.0), actor="t")
    found = store.recall("ranker", "printer code")
    assert found[0].memory.importance == 1.0
    assert found[-1].memory.id == old.id and found[-1].recency < 0.2


def test_a_word_in_every_memory_does_not_drown_the_rare_one(store: Store) -> None:
    """The bounded-work ranking: a word in thousands of memories is left out of the
    ranking, and the memory that holds the rare word is still found first, before and
    after the database's statistics know the table."""
    store.save_agent("busy", persona="")
    now = store.clock()
    rows = [
        {
            "agent_name": "busy",
            "kind": "note",
            "content": f"customer account note number {i} about invoices",
            "actor": "test",
            "created_at": now,
        }
        for i in range(3000)
    ]
    rows[1234]["content"] = "customer account note about the zeppelin hangar lease"
    with store.write() as conn:
        conn.execute(memories.insert(), rows)
    for analysed in (False, True):
        if analysed and store.engine.dialect.name == "postgresql":
            with store.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE memories")
                conn.commit()
            store.dialect._stats = None  # type: ignore[attr-defined]
        found = store.recall("busy", "customer account zeppelin lease", limit=5)
        assert found[0].memory.content == "customer account note about the zeppelin hangar lease"
        # Only common words: the memories holding all of them are ranked; one word alone
        # finds its memories, however many.
        assert len(store.recall("busy", "customer invoices", limit=3)) == 3
        assert len(store.recall("busy", "zeppelin", limit=3)) == 1
        assert len(store.recall("busy", "invoices", limit=3)) == 3
