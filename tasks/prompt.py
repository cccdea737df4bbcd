"""How an agent's configuration becomes the messages sent to a model."""

from __future__ import annotations


def system_prompt(persona: str, instruction: str, strategy: str) -> str:
    parts = []
    if persona:
        parts.append(persona.strip())
    if instruction:
        parts.append("Instructions: " + instruction.strip())
    if strategy:
        parts.append("Strategy: " + strategy.strip())
    return "\n\n".join(parts)
