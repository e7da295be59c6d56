"""python -m tests.harness.lab up|status|down: the field lab from the command line (needs root).

up      build a lab with N stations (optionally impaired, optionally with an iperf3 server
        on the core), print how to reach it, and hold it until Ctrl-C, SIGTERM or --for
        seconds; everything is removed on the way out
status  the labs on this machine: owner pid, running or stale, namespaces and addresses
down    remove stale labs (their owner is gone); with PIDs, stop those running labs too
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from tests.harness.lab.lab import Lab, alive, describe, lab_namespaces, reap_stale, stop_lab


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.harness.lab",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a lab and hold it until Ctrl-C")
    up.add_argument("--stations", type=int, default=2, help="how many stations (default 2)")
    up.add_argument("--delay", type=float, metavar="MS", help="added round-trip delay, ms")
    up.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="± jitter, ms")
    up.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="upstream loss, %%")
    up.add_argument("--rate", type=float, metavar="MBIT", help="tbf rate each way, Mbit/s")
    up.add_argument("--iperf3", action="store_true", help="run an iperf3 server on the core")
    up.add_argument("--for", dest="hold_s", type=float, metavar="S", help="hold S seconds")
    sub.add_parser("status", help="list the labs on this machine")
    down = sub.add_parser("down", help="remove stale labs, and the running labs named")
    down.add_argument("pids", type=int, nargs="*", metavar="PID", help="owner pid of a lab")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the field lab needs root (network namespaces, tc, iptables)", file=sys.stderr)
        return 2
    if args.command == "up":
        return cmd_up(args)
    if args.command == "status":
        return cmd_status()
    return cmd_down(args.pids)


def cmd_up(args: Any) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Lab() as lab:
        core = lab.core()
        changes: dict[str, Any] = {"loss_pct": args.loss, "rate_mbit": args.rate}
        if args.delay is not None or args.jitter:
            changes.update(delay_ms=args.delay or 0.0, jitter_ms=args.jitter)
        stations = [lab.station(f"st{i}") for i in range(1, args.stations + 1)]
        for st in stations:
            lab.impair(st, **changes)
        print(f"lab {lab.owner}: core {core.name} {core.addr}, targets {', '.join(core.targets)}")
        if args.iperf3:
            addr, port = lab.iperf3_server()
            print(f"iperf3 server on {addr}:{port}")
        for st in stations:
            print(f"station {st.label}: {st.name} {st.addr} via {st.gateway}  {changes}")
        first = stations[0].name if stations else core.name
        print(f"try: ip netns exec {first} fping -C 5 {core.addr}")
        print("holding; Ctrl-C or `python -m tests.harness.lab down PID` removes it", flush=True)
        deadline = None if args.hold_s is None else time.monotonic() + args.hold_s
        while not stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            stop.wait(1.0 if left is None else min(left, 1.0))
    print("lab removed", flush=True)
    return 0


def cmd_status() -> int:
    labs = lab_namespaces()
    if not labs:
        print("no labs")
    for pid, names in sorted(labs.items()):
        state = "running" if alive(pid) else "stale (owner gone; `down` removes it)"
        print(f"lab {pid}: {state}")
        for line in describe(names):
            print(f"  {line}")
    return 0


def cmd_down(pids: Sequence[int]) -> int:
    labs = lab_namespaces()
    code = 0
    for pid in pids:
        if pid not in labs:
            print(f"no lab with owner pid {pid}", file=sys.stderr)
            code = 1
            continue
        try:
            print(f"stopped lab {pid}: removed {len(stop_lab(pid))} namespaces")
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            code = 1
    removed = reap_stale()
    names = f": {' '.join(removed)}" if removed else ""
    print(f"removed {len(removed)} stale namespaces{names}")
    return code


if __name__ == "__main__":
    sys.exit(main())
