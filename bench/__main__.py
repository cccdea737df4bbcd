"""``python -m bench resume [--resumes N] [--backend embedded|redis|all]``.

``python -m bench store`` is the diagnosis behind the resume figures: the store's
two transactions of a resume, timed statement by statement, in-process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.procs import ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    resume = sub.add_parser(
        "resume",
        help="resume latency: webhook arrival -> next step started, vs a Celery round trip",
    )
    resume.add_argument("--resumes", type=int, default=500, help="measured resumes per backend")
    resume.add_argument(
        "--backend", choices=("embedded", "redis", "all"), default="all", help="default: all"
    )
    resume.add_argument("--warmup", type=int, default=5, help="unmeasured resumes first")
    resume.add_argument(
        "--poll-ms", type=float, default=2.0, help="client poll of the store/sink, in ms"
    )
    resume.add_argument(
        "--gap-ms",
        type=float,
        default=100.0,
        help="random idle time (uniform 0..gap) before each resume, so requests do not "
        "phase-lock with the SQLite broker's polling",
    )
    resume.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "resume_latency.json",
        help="JSON result file (raw samples go next to it, *_samples.json)",
    )
    store = sub.add_parser(
        "store",
        help="diagnosis: the store transactions of a resume, statement by statement",
    )
    store.add_argument("--resumes", type=int, default=300)
    store.add_argument("--store", choices=("sqlite", "postgres", "all"), default="all")
    store.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "store_profile.json"
    )
    args = parser.parse_args(argv)
    if args.benchmark == "store":
        from bench import store_profile

        kinds = ["sqlite", "postgres"] if args.store == "all" else [args.store]
        return store_profile.run(args.resumes, kinds, args.out)
    if args.resumes < 1 or args.warmup < 0:
        parser.error("--resumes must be >= 1 and --warmup >= 0")
    from bench import resume_latency

    backends = ["embedded", "redis"] if args.backend == "all" else [args.backend]
    return resume_latency.run(
        args.resumes, backends, args.warmup, args.poll_ms, args.gap_ms, args.out
    )


if __name__ == "__main__":
    sys.exit(main())
