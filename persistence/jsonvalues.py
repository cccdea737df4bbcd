"""JSON the store takes in and gives back: bounded on the way in, never fatal on the way out.

Python's ``json`` recurses: a value nested a few hundred levels deep can be written
(``dumps`` has the stack to spare) and then not read back (``loads`` runs out of it
inside the deeper stack of a request or a sweeper pass), and an integer of a few
thousand digits cannot be read back at all (``int`` refuses to parse over 4,300
digits). One such row made every batch read and every sweeper pass fail. So:

- ``check_json`` refuses, before anything is written, a value nested deeper than
  ``MAX_DEPTH`` or holding an integer outside 64 bits (what JSON peers, Postgres'
  ``bigint`` and JavaScript's ``BigInt``-free parsers can take), without recursion;
- ``loads`` is every engine's JSON reader: a stored value it cannot decode (written
  before these limits, or by hand) comes back as an ``Unreadable`` object naming the
  problem, so the row can be shown, skipped or failed on its own while the others go on;
- ``parse_json`` is the same for text from people and peers (the HTTP API, the CLI).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pausepoint.persistence.errors import InvalidInput

# Deeper than any agent input, tool result or event payload we know of (OpenAI's
# function-call arguments rarely pass 10); far below where Python's json runs out of stack.
MAX_DEPTH = 64
MIN_INT, MAX_INT = -(2**63), 2**63 - 1


class Unreadable(dict[str, Any]):
    """Stands in for a stored JSON value that cannot be decoded: ``{"unreadable": why}``."""

    def __init__(self, why: str) -> None:
        super().__init__(unreadable=why)

    @property
    def why(self) -> str:
        return str(self["unreadable"])


def is_unreadable(value: object) -> bool:
    return isinstance(value, Unreadable)


_CONTAINERS = (dict, list, tuple)


# What no text column of either store can hold: NUL (Postgres refuses it) and a lone
# UTF-16 surrogate (it cannot be encoded as UTF-8).
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None."""
    found = _BAD_TEXT.search(text)
    if found is None:
        return None
    return "holds a NUL character" if found.group() == "\x00" else "holds a lone surrogate"


def check_text(value: str | None, what: str, *, limit: int | None = None) -> str | None:
    """``value`` if a text column can keep it, else InvalidInput naming ``what``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidInput(f"{what} {problem}")
    if limit is not None and len(value) > limit:
        raise InvalidInput(f"{what} is longer than {limit:,} characters")
    return value


# Checkpoint numbers are 32-bit columns on both stores.
MAX_SEQ = 2**31 - 1


def check_seq(seq: int | None, what: str = "a checkpoint number") -> int | None:
    """``seq`` if a checkpoint can have that number, else InvalidInput."""
    if seq is None:
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise InvalidInput(f"{what} is a whole number from 0 to {MAX_SEQ}, not {seq!r}")
    return seq


def json_problem(value: Any, *, ints: bool = True) -> str | None:
    """Why ``value`` is outside the limits, or None.

    Level by level, containers only, no recursion: any depth is safe to check, and a
    value costs about half of its ``json.dumps``.
    """
    if type(value) is int and ints and not MIN_INT <= value <= MAX_INT:
        return _BIG_INT
    if type(value) is str:
        return text_problem(value)
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        below = []
        for item in level:
            if type(item) is dict:
                for key in item:
                    if type(key) is str and _BAD_TEXT.search(key):
                        return f"has a key that {text_problem(key)}"
            for child in item.values() if type(item) is dict else item:
                kind = type(child)
                if kind is dict or kind is list or kind is tuple:
                    below.append(child)
                elif kind is int and ints and not MIN_INT <= child <= MAX_INT:
                    return _BIG_INT
                elif kind is str and _BAD_TEXT.search(child):
                    return text_problem(child)
        level = below
    return None


_BIG_INT = "holds an integer outside the 64-bit range (send it as a string)"


def check_json(value: Any, what: str) -> Any:
    """``value`` if the store can write it and read it back, else InvalidInput naming ``what``."""
    problem = json_problem(value)
    if problem is not None:
        raise InvalidInput(f"{what} {problem}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} must be JSON-serializable: {exc}") from None
    return value


def loads(text: str | bytes) -> Any:
    """The engines' JSON reader: a value, or an ``Unreadable`` naming why it is not one.

    Deeper than MAX_DEPTH is unreadable whether or not this call's stack could decode
    it: the same row must read the same in a request, a worker and a test, and what is
    read must go back out (an API response, a checkpoint) without running out of stack.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        return Unreadable(f"stored JSON nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # also int digits beyond sys.get_int_max_str_digits()
        return Unreadable(f"stored JSON cannot be read: {exc}")
    # Only a text with more brackets than the limit can be nested past it (str.count is
    # cheap; the walk is not).
    opening = ("{", "[") if isinstance(text, str) else (b"{", b"[")
    if text.count(opening[0]) + text.count(opening[1]) > MAX_DEPTH:  # type: ignore[arg-type]
        problem = json_problem(value, ints=False)
        if problem is not None:
            return Unreadable(f"stored JSON {problem}")
    return value


def parse_json(text: str | bytes, what: str) -> Any:
    """Text from outside as a JSON value within the limits, or InvalidInput (never a 500)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    return check_json(value, what)
