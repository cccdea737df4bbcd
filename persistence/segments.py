"""A conversation as physical ranges of a run's stored messages.

Messages are append-only and numbered per run (``messages.idx``). Without a
rollback, a checkpoint's conversation is simply ``messages[0:history_len]`` and
its ``segments`` are NULL. A rollback takes the messages after the old
checkpoint out of the run's context but keeps them stored (for the audit), so
the messages written after it get new indexes: the conversation becomes a list
of ``[start, stop)`` ranges, such as ``[[0, 4], [9, 12]]``. Ranges only grow
upward, so reading a conversation stays one indexed range scan per segment.
"""

from __future__ import annotations

Segments = list[list[int]]


def explicit(segments: Segments | None, length: int) -> Segments:
    """The ranges of a conversation of ``length`` messages (NULL means one plain range)."""
    if segments is None:
        return [[0, length]] if length else []
    return [list(s) for s in segments]


def append(segments: Segments | None, length: int, first_idx: int, count: int) -> Segments | None:
    """The segments after ``count`` messages are stored at ``first_idx`` onward."""
    if count == 0:
        return segments
    if segments is None and first_idx == length:
        return None  # still one plain range from 0
    ranges = explicit(segments, length)
    if ranges and ranges[-1][1] == first_idx:
        ranges[-1][1] = first_idx + count
    else:
        ranges.append([first_idx, first_idx + count])
    return ranges


def physical(segments: Segments | None, length: int, start: int, stop: int) -> Segments:
    """The physical ranges holding logical messages ``[start, stop)`` of the conversation."""
    out: Segments = []
    offset = 0
    for a, b in explicit(segments, length):
        size = b - a
        lo, hi = max(start, offset), min(stop, offset + size)
        if lo < hi:
            out.append([a + lo - offset, a + hi - offset])
        offset += size
    return out
