"""What every benchmark hands back, and how the suite prints, saves and plots it.

A benchmark returns a :class:`Result`: rows of repeated measurements (each row
one case, each sample one repetition), the baseline each row is compared with
(measured in the same run), and the targets it checks. Figures on these
machines move from run to run, so the ratio to the baseline is the number to
read; the absolute figures are there to explain it.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One case: its samples (one per repetition), in ``unit``."""

    case: str
    unit: str
    samples: list[float]
    # The row this one is divided by (same benchmark, same run), if any.
    baseline: str | None = None
    # Larger is better (throughput) or smaller is better (latency, bytes).
    higher_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")


@dataclass
class Target:
    """A target from the issue, the figure that answers it, and whether it holds."""

    what: str
    value: float
    limit: float
    # "min": value must be >= limit; "max": value must be <= limit.
    kind: str
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.kind == "min" else self.value <= self.limit


@dataclass
class Result:
    name: str
    title: str
    baseline: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, case: str) -> Row:
        for r in self.rows:
            if r.case == case:
                return r
        raise KeyError(f"{self.name}: no row {case!r}")

    def ratio(self, row: Row) -> float | None:
        """Median of ``row`` over the median of its baseline row."""
        if row.baseline is None:
            return None
        base = self.row(row.baseline).median
        return row.median / base if base else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for r, d in zip(self.rows, out["rows"], strict=True):
            d.update(median=r.median, min=r.min, max=r.max, ratio=self.ratio(r))
        for t, d in zip(self.targets, out["targets"], strict=True):
            d["met"] = t.met
        return out


def machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save(results: Sequence[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "results": [r.as_dict() for r in results]}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def print_tables(results: Sequence[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for result in results:
        table = Table(
            title=f"{result.title}  (baseline: {result.baseline}; {result.seconds:.0f} s)",
            title_justify="left",
        )
        for col in ("case", "unit", "median", "min", "max", "n", "ratio"):
            table.add_column(col, justify="left" if col in ("case", "unit") else "right")
        for row in result.rows:
            ratio = result.ratio(row)
            table.add_row(
                row.case,
                row.unit,
                fmt(row.median),
                fmt(row.min),
                fmt(row.max),
                str(len(row.samples)),
                "" if ratio is None else f"{ratio:.2f} x {row.baseline}",
            )
        console.print(table)
        for target in result.targets:
            mark = "[green]met[/]" if target.met else "[red]missed[/]"
            op = "≥" if target.kind == "min" else "≤"
            console.print(
                f"  {mark}  {target.what}: {fmt(target.value)} {op} {fmt(target.limit)}"
                + (f"  ({target.note})" if target.note else ""),
                highlight=False,
            )
        for note in result.notes:
            console.print(f"  note: {note}", highlight=False)


def markdown(results: Sequence[Result]) -> str:
    """The tables as Markdown, for the README."""
    lines: list[str] = []
    for result in results:
        lines += [f"**{result.title}** (baseline: {result.baseline})", ""]
        lines += [
            "| case | unit | median | min | max | ratio |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for row in result.rows:
            ratio = result.ratio(row)
            lines.append(
                f"| {row.case} | {row.unit} | {fmt(row.median)} | {fmt(row.min)} | "
                f"{fmt(row.max)} | {'' if ratio is None else f'{ratio:.2f} x {row.baseline}'} |"
            )
        if result.targets:
            lines.append("")
            for t in result.targets:
                op = "≥" if t.kind == "min" else "≤"
                mark = "met" if t.met else "**missed**"
                note = f" ({t.note})" if t.note else ""
                lines.append(f"- {mark}: {t.what}: {fmt(t.value)} {op} {fmt(t.limit)}{note}")
        lines.append("")
    return "\n".join(lines)
