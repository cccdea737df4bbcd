"""The seed article's loan example as a script, one phase per process.

    python _agent_loan_script.py assess DB    # configure, assess, pause, exit
    python _agent_loan_script.py resume DB    # a new process: load by name, resume, finish

Each phase prints one JSON object describing what it saw, for the test to check.
"""

from __future__ import annotations

import json
import os
import sys

from pausepoint.tasks.agent import Agent, AgentPersistence

PERSONA = "I am a loan processing assistant..."
INSTRUCTION = "Follow strict compliance guidelines..."
STRATEGY = "Check debt-to-income first, then loan-to-income."
ASSESSMENT = (
    "Perform initial loan assessment for application L-1042: "
    "loan amount $25,000, annual income $90,000, existing debt $5,000"
)


def seen(agent: Agent) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "persona": agent.persona,
        "instruction": agent.instruction,
        "strategy": agent.strategy,
        "task": agent.task,
        "history": agent.history,
        "paused": agent.paused,
        "run_id": agent.run_id,
    }


def assess(db: str) -> dict[str, object]:
    persistence = AgentPersistence(db)
    try:
        # Create a loan processing agent
        agent = Agent("loan_processor", persistence)
        fresh = seen(agent)
        agent.persona = PERSONA
        agent.instruction = INSTRUCTION
        agent.strategy = STRATEGY
        # Initial assessment
        result = agent.execute(ASSESSMENT)
        # Save state while waiting for human approval
        agent.pause()
        return {"fresh": fresh, "result": result, "after": seen(agent)}
    finally:
        persistence.close()


def resume(db: str) -> dict[str, object]:
    persistence = AgentPersistence(db)
    try:
        agent = Agent("loan_processor", persistence)
        restored = seen(agent)
        # Later, when human approval is received
        resumed = agent.resume()
        after_resume = seen(agent)
        result = agent.execute("Continue processing with approved status")
        return {
            "restored": restored,
            "resumed": resumed,
            "after_resume": after_resume,
            "result": result,
            "after": seen(agent),
        }
    finally:
        persistence.close()


if __name__ == "__main__":
    phase, db = sys.argv[1], sys.argv[2]
    print(json.dumps({"assess": assess, "resume": resume}[phase](db)))
