"""python -m tests.drill [--short] [--real N] [--simulated N] [--shards N [--kill-shard-at S]]
[--out DIR]: run the drill, write DIR/report.md and DIR/report.json, print the report. Exit 0
when every check passed, 1 when one failed, 2 when this machine cannot run it (not root, a tool
missing), 130 on Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tests.drill import report
from tests.drill.plan import FORMS
from tests.drill.run import ROOT, Drill, Options, environment_problems


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM takes the same way out as Ctrl-C, so everything started is stopped.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.drill", description=__doc__)
    ap.add_argument(
        "--short",
        action="store_true",
        help="the short form for CI (10 s rounds, about 3-4 minutes); default: the long form"
        " for a control-room rehearsal (30 s rounds, about 20 minutes)",
    )
    ap.add_argument("--real", type=int, help="stations with a real agent (default 20; short 8)")
    ap.add_argument(
        "--simulated",
        type=int,
        help="stations for the fleet simulator, when installed (default 200; short 20)",
    )
    ap.add_argument("--profile", default="good4g=0.9,congested=0.1", help="simulator profile mix")
    ap.add_argument(
        "--shards",
        type=int,
        default=1,
        help="collector processes (default 1); 2 or more run behind nginx, every station"
        " routed to one of them (consistent hash of its station)",
    )
    ap.add_argument(
        "--kill-shard-at",
        type=float,
        metavar="S",
        help="with --shards: SIGKILL the collector that owns the dark station S seconds after"
        " T0, and start it again --kill-down-s later",
    )
    ap.add_argument(
        "--kill-down-s",
        type=float,
        default=15.0,
        metavar="S",
        help="how long the killed collector stays down (default 15)",
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "var" / "drill", help="report directory (var/drill)"
    )
    args = ap.parse_args(argv)
    if not 1 <= args.shards <= 8:
        ap.error(f"--shards: got {args.shards}, expected 1..8 collector processes")
    if args.kill_shard_at is not None and (args.shards < 2 or args.kill_shard_at < 0):
        ap.error("--kill-shard-at: needs --shards 2 or more and a time >= 0 after T0")
    if not 0 < args.kill_down_s <= 600:
        ap.error(f"--kill-down-s: got {args.kill_down_s:g}, expected 0..600 seconds")
    problems = environment_problems(args.shards)
    if problems:
        for p in problems:
            print(f"drill: {p}", file=sys.stderr)
        return 2
    timing = FORMS["short" if args.short else "long"]
    opts = Options(
        timing=timing,
        real=args.real if args.real is not None else (8 if args.short else 20),
        simulated=args.simulated if args.simulated is not None else (20 if args.short else 200),
        sim_profile=args.profile,
        out=args.out,
        shards=args.shards,
        kill_shard_at=args.kill_shard_at,
        kill_down_s=args.kill_down_s,
        log=lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True),
    )
    signal.signal(signal.SIGTERM, _interrupt)
    drill = Drill(opts)
    try:
        obs = drill.run()
    except KeyboardInterrupt:
        print("drill: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # the stack is down already; say why, keep the logs
        print(f"drill: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"drill: logs in {opts.out / 'run'}; everything it started is stopped", file=sys.stderr
        )
        return 1
    rep = report.build(obs, timing, drill.problems, drill.real, drill.sim)
    md, js = report.write(rep, args.out)
    print()
    print(md.read_text(encoding="utf-8"))
    print(f"drill: report in {md} and {js}")
    return 0 if rep.passed else 1


if __name__ == "__main__":
    sys.exit(main())
