"""``python -m bench all [--repeats 3] [--quick] [--only a,b]``: every benchmark.

``python -m bench resume [--resumes N] [--backend embedded|redis|all]``: resume
latency alone, with its breakdown.

``python -m bench store`` is the diagnosis behind the resume figures: the store's
two transactions of a resume, timed statement by statement, in-process.

``python -m bench agent-loop [--repeats 5] [--quick] [--profile sqlite]``: the agent
loop's overhead per call, Pausepoint on both stores vs the OpenAI Agents SDK.
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
    memory = sub.add_parser(
        "memory",
        help="agent memory: recall at a 2k/8k budget vs last turns and full history, "
        "recall latency at 1k/100k memories, a 20,000-message run",
    )
    memory.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    memory.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    loop = sub.add_parser(
        "agent-loop",
        help="agent loop overhead: ms per model/tool call above the server, Pausepoint on "
        "SQLite and Postgres vs the OpenAI Agents SDK with its SQLiteSession",
    )
    loop.add_argument("--repeats", type=int, default=5, help="repetitions of each config")
    loop.add_argument("--quick", action="store_true", help="3 repetitions: a smoke run")
    loop.add_argument(
        "--profile",
        choices=("sqlite", "postgres", "sdk"),
        help="instead: profile a few runs of one config with pyinstrument",
    )
    loop.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "agent_loop.json",
        help="JSON result file",
    )
    verify = sub.add_parser(
        "audit-verify",
        help="verifying one run of 20,000 events (keyed chain and state digests) vs reading it",
    )
    verify.add_argument("--events", type=int, default=20_000, help="steps of the run")
    verify.add_argument("--repeats", type=int, default=3)
    verify.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "audit_verify.json"
    )
    sub.add_parser(
        "io-load",
        help="I/O-bound steps (each a 200 ms model call) on the threads pool at "
        "concurrency 16/64/256 vs raw Celery; `io-load --help` for its options",
        add_help=False,
    )
    sub.add_parser(
        "reads",
        help="bounded reads of a 20,000-message run (API, CLI) vs a plain SQL page select; "
        "`reads --help` for its options",
        add_help=False,
    )
    every = sub.add_parser(
        "all",
        help="every benchmark (throughput, checkpoint, resume, parked): table, JSON and PNG",
    )
    every.add_argument("--repeats", type=int, default=3, help="repetitions of each (>= 3)")
    every.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    every.add_argument(
        "--only", default="", help="comma-separated subset: throughput,checkpoint,resume,parked"
    )
    every.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    rest = sys.argv[1:] if argv is None else argv
    if rest and rest[0] == "io-load":
        from bench import io_load

        return io_load.main(rest[1:])
    if rest and rest[0] == "reads":
        from bench import reads

        return reads.main(rest[1:])
    args = parser.parse_args(argv)
    if args.benchmark == "all":
        from bench.suite import BENCHMARKS, run_all

        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown or args.repeats < 1:
            parser.error(f"unknown benchmark(s) {unknown}" if unknown else "--repeats >= 1")
        return run_all(names, args.repeats, args.quick, args.out_dir)
    if args.benchmark == "audit-verify":
        from bench import audit_verify

        return audit_verify.run(args.events, max(1, args.repeats), args.out)
    if args.benchmark == "agent-loop":
        from bench import agent_loop_bench

        if args.repeats < 1:
            parser.error("--repeats >= 1")
        return agent_loop_bench.main(args.repeats, args.quick, args.out, args.profile)
    if args.benchmark == "memory":
        from bench import memory_bench

        return memory_bench.run(quick=args.quick, out=args.out)
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
