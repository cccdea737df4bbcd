"""``python -m bench all``: every benchmark, a table, bench.json, bench.png, bench.md.

Each benchmark module has ``run(repeats, *, quick, out_dir) -> Result`` (see
:mod:`bench.report`). They run one after the other on an otherwise idle machine:
the figures are ratios to baselines measured in the same run.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.report import Result, markdown, print_tables, save

BENCHMARKS: dict[str, str] = {
    "throughput": "bench.throughput:run",
    "checkpoint": "bench.checkpoint_cost:run",
    "resume": "bench.resume_latency:suite",
    "parked": "bench.parked:run",
    "agent_loop": "bench.agent_loop_bench:run",
}


def _load(spec: str) -> Callable[..., Result]:
    import importlib

    module, _, attr = spec.partition(":")
    fn: Callable[..., Result] = getattr(importlib.import_module(module), attr)
    return fn


def run_all(names: Sequence[str], repeats: int, quick: bool, out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    failed: list[str] = []
    started = time.monotonic()
    for i, name in enumerate(names, 1):
        print(f"\n=== [{i}/{len(names)}] {name} ===", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            result = _load(BENCHMARKS[name])(repeats, quick=quick, out_dir=out_dir)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        if not result.seconds:
            result.seconds = time.monotonic() - t0
        results.append(result)
        print(f"=== {name}: {result.seconds:.0f} s ===", file=sys.stderr, flush=True)
        # Saved after each benchmark, so a later failure keeps what was measured.
        save(results, out_dir / "bench.json")
    total = time.monotonic() - started
    print_tables(results)
    (out_dir / "bench.md").write_text(
        markdown(results) + f"\nTotal wall time: {total / 60:.1f} min.\n"
    )
    try:
        plot(results, out_dir / "bench.png")
    except Exception:
        traceback.print_exc()
        failed.append("plot")
    print(
        f"\nwrote {out_dir / 'bench.json'}, bench.md and bench.png in {total / 60:.1f} min",
        file=sys.stderr,
    )
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


_AT = re.compile(r"^(?P<series>.*?)[\s:,]*@\s*(?P<n>[\d,]+)\s*$")


def plot(results: Sequence[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[Result, str]] = []
    for r in results:
        for unit in dict.fromkeys(row.unit for row in r.rows):
            panels.append((r, unit))
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(15, 4.2 * rows), squeeze=False)
    for ax, (result, unit) in zip(axes.flat, panels, strict=False):
        chosen = [row for row in result.rows if row.unit == unit]
        series: dict[str, list[tuple[int, Any]]] = {}
        for row in chosen:
            m = _AT.match(row.case)
            if m is None:
                series = {}
                break
            series.setdefault(m["series"], []).append((int(m["n"].replace(",", "")), row))
        if series and all(len(points) > 1 for points in series.values()):
            for label, points in series.items():
                points.sort(key=lambda p: p[0])
                xs = [p[0] for p in points]
                ys = [p[1].median for p in points]
                lo = [p[1].median - p[1].min for p in points]
                hi = [p[1].max - p[1].median for p in points]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("messages in the conversation")
            ax.legend(fontsize=7)
        else:
            labels = [row.case for row in chosen]
            meds = [row.median for row in chosen]
            lo = [row.median - row.min for row in chosen]
            hi = [row.max - row.median for row in chosen]
            ax.barh(range(len(chosen)), meds, xerr=[lo, hi], capsize=3, color="#4C78A8")
            ax.set_yticks(range(len(chosen)), labels, fontsize=7)
            ax.invert_yaxis()
            if meds and min(m for m in meds if m > 0) * 100 < max(meds):
                ax.set_xscale("log")
        ax.set_title(f"{result.title} ({unit})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("Pausepoint benchmarks: median, bars from min to max of the repetitions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
