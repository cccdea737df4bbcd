"""How an agent's configuration becomes the messages sent to a model."""

from __future__ import annotations

from collections.abc import Sequence

from pausepoint.tasks.llm import Message


def system_prompt(persona: str, instruction: str, strategy: str) -> str:
    parts = []
    if persona:
        parts.append(persona.strip())
    if instruction:
        parts.append("Instructions: " + instruction.strip())
    if strategy:
        parts.append("Strategy: " + strategy.strip())
    return "\n\n".join(parts)


def build_messages(
    persona: str,
    instruction: str,
    strategy: str,
    history: Sequence[Message],
    task: str,
) -> list[Message]:
    system = system_prompt(persona, instruction, strategy)
    out: list[Message] = [{"role": "system", "content": system}] if system else []
    out.extend({"role": m["role"], "content": m["content"]} for m in history)
    out.append({"role": "user", "content": task})
    return out
