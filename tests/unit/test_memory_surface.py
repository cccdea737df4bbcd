"""Memories as users reach them: the HTTP API, the CLI and the seed ``Agent``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pausepoint.persistence.records import NewMemory
from pausepoint.tasks.agent import Agent, AgentPersistence
from pausepoint.tasks.counting import default_counter, prompt_tokens
from pausepoint.tasks.llm import ScriptedBackend
from tests.unit.test_api_audit import PRODUCER, ROOT, VIEWER, Env, env  # noqa: F401
from tests.unit.test_cli import Cli, cli  # noqa: F401

# ------------------------------------------------------------------- HTTP


def test_memories_over_http_list_search_write_and_forget(env: Env) -> None:  # noqa: F811
    base = "/agents/loan_processor/memories"
    made = env.ok(
        env.post(
            base, {"content": "Dana earns 80k", "subject": "dana", "key": "income"}, key=PRODUCER
        ),
        201,
    )
    assert made["current"] and made["subject"] == "dana"
    env.ok(
        env.post(
            base,
            {"content": "Dana now earns 95k", "subject": "dana", "key": "income"},
            key=PRODUCER,
        ),
        201,
    )
    for i in range(5):
        env.ok(env.post(base, {"content": f"general note {i}"}, key=PRODUCER), 201)

    found = env.ok(env.get(base, params={"query": "what does Dana earn"}))
    assert found["memories"][0]["content"] == "Dana now earns 95k"
    assert found["memories"][0]["score"] > 0
    page = env.ok(env.get(base, params={"limit": 3}))
    assert len(page["memories"]) == 3 and page["next_before"] == page["memories"][-1]["id"]
    rest = env.ok(env.get(base, params={"limit": 3, "before": page["next_before"]}))
    assert {m["id"] for m in rest["memories"]}.isdisjoint(m["id"] for m in page["memories"])
    everything = env.ok(env.get(base, params={"include_superseded": "true", "subject": "dana"}))
    assert [m["current"] for m in everything["memories"]] == [True, False]

    # Roles: a viewer reads but neither writes nor forgets; a producer cannot forget.
    env.refused(lambda: env.post(base, {"content": "x"}, key=VIEWER), 403)
    env.refused(lambda: env.post(f"{base}/forget", {"subject": "dana"}, key=PRODUCER), 403)
    # Bad input: 4xx with a message, nothing stored.
    env.refused(lambda: env.post(base, {"content": ""}, key=PRODUCER), 422)
    env.refused(lambda: env.post(base, {"content": "x", "kind": "gossip"}, key=PRODUCER), 422)
    env.refused(lambda: env.post(base, {"content": "x", "importance": 3}, key=PRODUCER), 422)
    env.refused(lambda: env.get("/agents/nobody/memories"), 404)
    env.refused(lambda: env.get(base, params={"kind": "gossip"}), 422)
    env.refused(lambda: env.get(base, params={"limit": 0}), 422)

    erased = env.ok(env.post(f"{base}/forget", {"subject": "dana", "reason": "request"}, key=ROOT))
    assert erased["erased"] == 2
    assert env.ok(env.get(base, params={"subject": "dana", "include_superseded": "true"})) == {
        "memories": [],
        "next_before": None,
    }
    (erasure,) = env.ok(env.get(f"{base}/erasures"))
    assert erasure["subject"] == "dana" and erasure["actor"] == "api:root"


# -------------------------------------------------------------------- CLI


def test_memory_commands(cli: Cli) -> None:  # noqa: F811
    assert cli("agent", "helper", "--persona", "I help.").code == 0
    assert (
        cli("memory", "add", "helper", "Eve likes tea", "--subject", "eve", "--key", "drink").code
        == 0
    )
    assert (
        cli(
            "memory", "add", "helper", "Eve likes coffee now", "--subject", "eve", "--key", "drink"
        ).code
        == 0
    )
    listed = cli("memory", "list", "helper", "--all")
    assert listed.code == 0 and "superseded" in listed.out and "coffee" in listed.out
    found = cli("memory", "search", "helper", "what does Eve drink", "--json")
    assert found.code == 0 and found.out.splitlines()[0].count("coffee") == 1
    # Without a terminal, forgetting needs --yes; it then erases and says so.
    refused = cli("memory", "forget", "helper", "--subject", "eve")
    assert refused.code == 1 and "--yes" in refused.err
    done = cli("memory", "forget", "helper", "--subject", "eve", "--yes", "--reason", "asked")
    assert done.code == 0 and "erased 2" in done.out
    assert "asked" in cli("memory", "erasures", "helper").out
    for args, says in [
        (("memory", "list", "nobody"), "no agent named 'nobody'"),
        (("memory", "add", "helper", "x", "--kind", "gossip"), "memory kind must be one of"),
        (("memory", "list", "helper", "--kind", "gossip"), "unknown kind"),
        (("agent", "helper", "--model", '{"context_window": 10}'), "context_window"),
    ]:
        bad = cli(*args)
        assert bad.code == 1 and says in bad.err and "Traceback" not in bad.err


# ------------------------------------------------------------ the seed API


def test_the_seed_agent_remembers_and_recalls_across_sessions(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    persistence = AgentPersistence(db)
    agent = Agent("advisor", persistence, llm=ScriptedBackend(default="noted"))
    agent.persona = "I advise on loans."
    agent.execute("Frank asks about a mortgage")
    agent.remember("Frank wants a 20 year mortgage", subject="frank", importance=0.9)
    persistence.close()

    later = AgentPersistence(db)
    backend = ScriptedBackend(default="ok")
    again = Agent("advisor", later, llm=backend)
    assert [r.memory.content for r in again.recall("Frank mortgage years")] == [
        "Frank wants a 20 year mortgage"
    ]
    again.execute("What term did Frank want for the mortgage?")
    sent = backend.calls[-1]
    assert any("20 year mortgage" in m["content"] for m in sent if m["role"] == "system")
    remembered = [e for e in later.store.events(again.run_id or "") if e.kind == "remembered"]
    assert remembered and "content" not in remembered[0].data
    later.close()


def test_the_seed_agent_stays_within_budget_and_keeps_its_summary(tmp_path: Path) -> None:
    db = str(tmp_path / "agent.db")
    persistence = AgentPersistence(db)
    limit = 1024 - 128
    backend = ScriptedBackend(default="fine", context_limit=limit)
    agent = Agent("talker", persistence, llm=backend)
    agent.model = {"context_window": 1024, "reply_tokens": 128}
    for i in range(120):
        agent.execute(f"Message {i}: the weather in town {i % 9} is mild, note it please")
    assert all(prompt_tokens(default_counter(), call) <= limit for call in backend.calls)
    assert len(agent.history) == 240
    summaries = persistence.store.summaries(agent.run_id or "")
    assert summaries and summaries[-1].covers > 0
    persistence.close()

    # A new process loads the summary in effect with the session.
    again = AgentPersistence(db)
    later = ScriptedBackend(default="ok", context_limit=limit)
    resumed = Agent(
        "talker",
        again,
        llm=later,
    )
    resumed.execute("And what now?")
    assert any(
        m["content"].startswith("Summary of the earlier conversation")
        for m in later.calls[0]
        if m["role"] == "system"
    )
    again.close()


def test_bad_model_settings_on_the_seed_agent_are_refused(tmp_path: Path) -> None:
    from pausepoint.persistence.errors import ConfigurationError

    agent = Agent("strict", AgentPersistence(str(tmp_path / "a.db")))
    with pytest.raises(ConfigurationError):
        agent.model = {"context_window": 10}
    with pytest.raises(Exception, match="content"):
        agent.remember("")
    assert NewMemory("x").content == "x"
