"""The seed article's API: ``Agent(name, AgentPersistence(db))``, on the same store as queued runs.

The loan example runs as the article writes it, across two real processes: the
first assesses and pauses, the second finds the agent by name and finishes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pausepoint.tasks.examples  # noqa: F401  (registers the loan workflow)
from pausepoint.persistence.errors import StaleVersion
from pausepoint.persistence.records import ACTIVE, COMPLETED, PAUSED, SESSION_WORKFLOW, WAITING
from pausepoint.persistence.store import Store
from pausepoint.tasks.agent import Agent, AgentPersistence
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.prompt import system_prompt
from pausepoint.tasks.runtime import Runtime

SCRIPT = Path(__file__).with_name("_agent_loan_script.py")
PERSONA = "I am a loan processing assistant..."
INSTRUCTION = "Follow strict compliance guidelines..."
LOAN_TASK = "Loan application L-1042: amount $25,000, annual income $90,000, existing debt $5,000"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "agent_memory.db")


@pytest.fixture
def persistence(db: str) -> Iterator[AgentPersistence]:
    p = AgentPersistence(db)
    try:
        yield p
    finally:
        p.close()


def run_phase(phase: str, db: str, cwd: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), phase, db],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# ------------------------------------------------------ the seed's loan example


def test_loan_example_pauses_in_one_process_and_finishes_in_another(
    db: str, tmp_path: Path
) -> None:
    first = run_phase("assess", db, tmp_path)
    assert first["fresh"]["persona"] == "" and first["fresh"]["history"] == []
    assert "RECOMMENDATION: APPROVE" in first["result"]
    assert "$25,000" in first["result"]
    assert first["after"]["paused"] is True

    second = run_phase("resume", db, tmp_path)
    assert second["restored"]["pid"] != first["after"]["pid"]
    restored = second["restored"]
    assert restored["persona"] == PERSONA
    assert restored["instruction"] == INSTRUCTION
    assert restored["strategy"] == first["after"]["strategy"] != ""
    assert restored["task"] == first["after"]["task"]
    assert "L-1042" in restored["task"] and "$25,000" in restored["task"]
    assert restored["history"] == first["after"]["history"]
    assert restored["paused"] is True
    assert restored["run_id"] == first["after"]["run_id"]
    assert second["resumed"] is True
    assert second["after_resume"]["paused"] is False

    history = second["after"]["history"]
    assert len(history) == 4
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"] == restored["task"]
    assert history[1]["content"] == first["result"]
    assert history[2]["content"] == "Continue processing with approved status"
    assert history[3]["content"] == second["result"]
    assert "approved" in second["result"].lower()

    store = Store.from_url(f"sqlite:///{db}")
    try:
        (session,) = store.list_runs(agent="loan_processor")
        assert session.id == restored["run_id"]
        assert session.workflow == SESSION_WORKFLOW
        assert session.status == ACTIVE
        assert session.task == "Continue processing with approved status"
        assert [m.as_chat() for m in store.history(session.id)] == history
        checkpoints = store.checkpoints(session.id)
        assert [c.seq for c in checkpoints] == [0, 1, 2, 3, 4]
        assert [c.history_len for c in checkpoints] == [0, 2, 2, 2, 4]
        assert checkpoints[2].state == {"task": restored["task"], "paused": True}
        events = store.events(session.id)
        assert [e.kind for e in events] == ["created", "executed", "paused", "resumed", "executed"]
        by_kind = {e.kind: e.actor for e in events}
        assert by_kind["paused"].endswith(f":{first['after']['pid']}")
        assert by_kind["resumed"].endswith(f":{second['after']['pid']}")
        agent = store.get_agent("loan_processor")
        assert (agent.persona, agent.instruction) == (PERSONA, INSTRUCTION)
    finally:
        store.close()


# ------------------------------------------------------- saving and loading


def test_an_agent_created_again_by_name_loads_its_saved_state(
    persistence: AgentPersistence,
) -> None:
    first = Agent("clerk", persistence)
    assert first.load_state() is False
    assert first.persona == "" and first.history == [] and first.run_id is None
    assert persistence.store.list_agents() == []

    first.persona = "I am a clerk."
    first.instruction = "Be brief."
    first.strategy = "One line answers."
    reply = first.execute("File form 27")
    assert first.load_state() is True

    again = Agent("clerk", persistence)
    assert (again.persona, again.instruction, again.strategy) == (
        "I am a clerk.",
        "Be brief.",
        "One line answers.",
    )
    assert again.task == "File form 27"
    assert again.history == [
        {"role": "user", "content": "File form 27"},
        {"role": "assistant", "content": reply},
    ]
    assert again.paused is False
    assert again.run_id == first.run_id is not None

    unknown = Agent("nobody", persistence)
    assert unknown.persona == "" and unknown.history == [] and unknown.task == ""
    assert unknown.load_state() is False
    assert unknown.resume() is False
    assert [a.name for a in persistence.store.list_agents()] == ["clerk"]


def test_save_state_then_load_state(persistence: AgentPersistence) -> None:
    agent = Agent("saver", persistence)
    agent.persona = "I save."
    assert agent.save_state() is True
    assert persistence.save_agent_state(agent) is True
    again = Agent("saver", persistence)
    assert again.persona == "I save."
    assert persistence.load_agent_state(again) is True
    events = persistence.store.events(again.run_id or "")
    assert [e.kind for e in events] == ["created", "saved", "saved"]


def test_a_stale_agent_object_cannot_overwrite_a_newer_save(
    persistence: AgentPersistence,
) -> None:
    old = Agent("clerk", persistence)
    old.execute("first")
    new = Agent("clerk", persistence)
    new.execute("second")
    with pytest.raises(StaleVersion):
        old.execute("stale")
    again = Agent("clerk", persistence)
    assert [m["content"] for m in again.history if m["role"] == "user"] == ["first", "second"]


def test_two_agents_keep_separate_histories(persistence: AgentPersistence) -> None:
    alice, bob = Agent("alice", persistence), Agent("bob", persistence)
    alice.persona, bob.persona = "I am Alice.", "I am Bob."
    alice.execute("Alice's first task")
    bob.execute("Bob's first task")
    alice.execute("Alice's second task")

    alice2, bob2 = Agent("alice", persistence), Agent("bob", persistence)
    assert [m["content"] for m in alice2.history if m["role"] == "user"] == [
        "Alice's first task",
        "Alice's second task",
    ]
    assert [m["content"] for m in bob2.history if m["role"] == "user"] == ["Bob's first task"]
    assert (alice2.persona, bob2.persona) == ("I am Alice.", "I am Bob.")
    assert alice2.run_id != bob2.run_id
    assert len(persistence.store.history(alice2.run_id or "")) == 4
    assert len(persistence.store.history(bob2.run_id or "")) == 2


def test_resume_other_agent_adopts_its_saved_state(persistence: AgentPersistence) -> None:
    source = Agent("source", persistence)
    source.persona, source.instruction = "I am the source.", "Cite everything."
    source.execute("Gather the documents")
    source.pause()

    heir = Agent("heir", persistence)
    assert heir.resume("source") is True
    assert (heir.persona, heir.instruction) == ("I am the source.", "Cite everything.")
    assert heir.task == "Gather the documents"
    assert heir.history == source.history
    assert heir.paused is False
    assert heir.run_id is not None and heir.run_id != source.run_id

    # The source is untouched, and the heir's configuration is saved under its own name.
    assert Agent("source", persistence).paused is True
    assert persistence.store.get_agent("heir").persona == "I am the source."
    assert Agent("heir", persistence).history == source.history
    assert heir.resume("no-such-agent") is False


def test_an_agent_with_history_that_adopts_another_reloads_as_it_was(
    persistence: AgentPersistence,
) -> None:
    source = Agent("source", persistence)
    source.execute("Source task")
    heir = Agent("heir", persistence)
    heir.execute("Heir's own earlier task")
    assert heir.resume("source") is True
    assert heir.history == source.history
    assert Agent("heir", persistence).history == heir.history


# ------------------------------------------------------------ the LLM backend


def test_execute_sends_persona_and_previous_turns_to_the_given_backend(
    persistence: AgentPersistence,
) -> None:
    backend = ScriptedBackend(
        rules=[(r"assess", "ASSESSED: $message"), (r"approved", "DONE, approved")]
    )
    agent = Agent("scripted", persistence, llm=backend)
    agent.persona, agent.instruction, agent.strategy = PERSONA, INSTRUCTION, "Be careful."
    assert agent.execute("Please assess L-7") == "ASSESSED: Please assess L-7"
    assert agent.execute("Continue processing with approved status") == "DONE, approved"

    system = {"role": "system", "content": system_prompt(PERSONA, INSTRUCTION, "Be careful.")}
    assert PERSONA in system["content"] and INSTRUCTION in system["content"]
    assert backend.calls == [
        [system, {"role": "user", "content": "Please assess L-7"}],
        [
            system,
            {"role": "user", "content": "Please assess L-7"},
            {"role": "assistant", "content": "ASSESSED: Please assess L-7"},
            {"role": "user", "content": "Continue processing with approved status"},
        ],
    ]
    # A new object with another backend continues the same conversation.
    later = ScriptedBackend(rules=[], default="ok")
    again = Agent("scripted", persistence, llm=later)
    again.execute("And now?")
    assert later.calls[0][0] == system
    assert len(later.calls[0]) == 1 + 4 + 1


# ------------------------------------------------- the same store, queued runs


def test_the_same_store_runs_the_loan_workflow_with_the_seed_agent(
    persistence: AgentPersistence,
) -> None:
    agent = Agent("loan_processor", persistence)
    agent.persona, agent.instruction = PERSONA, INSTRUCTION
    assert agent.save_state() is True

    store = persistence.store
    backend = ScriptedBackend()
    published: list[tuple[str, int]] = []

    def publish(run_id: str, version: int) -> None:
        published.append((run_id, version))

    rt = Runtime(store, llm=backend, publish=publish)
    run = rt.start("loan", agent="loan_processor", task=LOAN_TASK, actor="test")
    assert published == [(run.id, run.version)]
    report = rt.run_step(*published[-1])
    assert report.outcome == "committed" and report.status == WAITING
    waiting = store.get_run(run.id)
    assert waiting.status == WAITING and waiting.step == "finalize"
    (wait,) = store.waits(run.id)
    assert wait.kind == "approval" and wait.status == "pending"
    assert len(published) == 1  # a waiting run holds no message

    decided = rt.decide(run.id, approved=True, actor="alice", comment="fine")
    assert published[-1] == (decided.id, decided.version)
    rt.run_step(*published[-1])
    done = store.get_run(run.id)
    assert done.status == COMPLETED
    assert done.result["outcome"] == "approved" and done.result["by"] == "alice"
    assert done.result["recommendation"] == "APPROVE"
    assert "approved" in done.result["note"].lower()

    # The workflow spoke as the agent configured through the seed API.
    assert len(backend.calls) == 2
    for call in backend.calls:
        assert call[0]["role"] == "system"
        assert PERSONA in call[0]["content"] and INSTRUCTION in call[0]["content"]
    assert "L-1042" in backend.calls[0][-1]["content"]

    # Its session and its workflow run live side by side in one store.
    runs = {r.workflow: r for r in store.list_runs(agent="loan_processor")}
    assert set(runs) == {SESSION_WORKFLOW, "loan"}
    assert runs[SESSION_WORKFLOW].id == agent.run_id
    assert Agent("loan_processor", persistence).history == []


def test_list_runs_can_leave_out_script_sessions(persistence: AgentPersistence) -> None:
    Agent("clerk", persistence).save_state()
    persistence.store.save_agent("worker-agent")
    rt = Runtime(persistence.store, llm=ScriptedBackend(), publish=lambda run_id, version: None)
    run = rt.start("noop", agent="worker-agent")
    listed = persistence.store.list_runs(include_sessions=False)
    assert [r.id for r in listed] == [run.id]


# --------------------------------------------------------- AgentPersistence


def test_agent_persistence_takes_a_store_url_or_a_path(tmp_path: Path) -> None:
    path = tmp_path / "by-url.db"
    by_url = AgentPersistence(f"sqlite:///{path}")
    try:
        agent = Agent("clerk", by_url)
        agent.persona = "I am stored by URL."
        agent.execute("hello")
        agent.pause()
    finally:
        by_url.close()
    assert path.exists()

    by_path = AgentPersistence(str(path))
    try:
        again = Agent("clerk", by_path)
        assert again.persona == "I am stored by URL."
        assert again.paused is True
        assert again.history[0] == {"role": "user", "content": "hello"}
        assert by_path.store.get_run(again.run_id or "").status == PAUSED
    finally:
        by_path.close()


def test_agent_without_persistence_uses_agent_memory_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    agent = Agent("loan_processor")
    try:
        agent.persona = PERSONA
        agent.execute("Perform initial loan assessment")
        agent.pause()
    finally:
        agent._persistence.close()
    assert (tmp_path / "agent_memory.db").exists()
    p = AgentPersistence(str(tmp_path / "agent_memory.db"))
    try:
        again = Agent("loan_processor", p)
        assert again.persona == PERSONA and again.paused is True
        assert len(again.history) == 2
    finally:
        p.close()
