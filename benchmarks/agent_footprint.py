"""Agent footprint at the default schedule: steady RSS and CPU over a long run.

Runs `sinyal-agent run --plain` with 10 loopback ICMP targets every minute and DNS and HTTP
every 5 minutes (against deploy/local/targets.py) for --duration seconds (default 600),
sampling the agent's CPU time and RSS from /proc every 5 s. Steady figures exclude the first
60 s (start-up imports). Targets: steady RSS <= 40 MB, CPU <= 1 % of one core.

    .venv/bin/python benchmarks/agent_footprint.py [--duration 600]
Writes benchmarks/results/agent-footprint.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import BIN, RESULTS, demo_targets, loopback_config, machine, proc_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument(
        "--bin",
        type=Path,
        default=BIN,
        help="bin directory of the venv to measure; use an agent-only install, as on a Pi: "
        "python3 -m venv /tmp/agent-venv && /tmp/agent-venv/bin/pip install '.[agent]' "
        "(a dev venv also holds click, which makes httpx import its CLI and rich: ~5 MB more)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, demo_targets():
        cfg = loopback_config(Path(tmp))
        proc = subprocess.Popen(
            [
                str(args.bin / "sinyal-agent"),
                "run",
                "--plain",
                "-c",
                str(cfg),
                "--duration",
                str(args.duration),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        t0 = time.monotonic()
        samples: list[tuple[float, float, float]] = []  # (t, cpu_s, rss_mb)
        while proc.poll() is None:
            try:
                cpu, rss = proc_sample(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            samples.append((time.monotonic() - t0, cpu, rss))
            time.sleep(5)
        out, _ = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    install = "agent-only: pip install '.[agent]'" if args.bin != BIN else "the dev venv"
    steady = [s for s in samples if s[0] >= args.warmup]
    if len(steady) < 2:
        raise SystemExit("run too short for steady-state figures")
    cpu_pct = 100 * (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
    rss = [s[2] for s in steady]
    counts = {k: sum(1 for ln in lines if f"Z {k} " in ln) for k in ("icmp", "dns", "http")}
    report = f"""# Agent footprint

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.
`sinyal-agent run --plain` for {args.duration:.0f} s: 10 loopback ICMP targets every 60 s
(10 echo requests each), DNS and HTTP every 300 s against deploy/local/targets.py.
Steady state = samples after the first {args.warmup:.0f} s ({len(steady)} samples, every 5 s).
Agent installed from `{args.bin.parent}` ({install}).

| metric | value | target |
|---|---|---|
| steady RSS, max | {max(rss):.1f} MB | <= 40 MB |
| steady RSS, median | {statistics.median(rss):.1f} MB | |
| CPU, steady average | {cpu_pct:.2f} % of one core | <= 1 % |
| CPU time, whole run incl. start-up | {samples[-1][1]:.2f} s | |
| records produced | icmp {counts["icmp"]}, dns {counts["dns"]}, http {counts["http"]} | |

Benchmarks are not timed tests: the machine is shared and noisy; rerun to compare.
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "agent-footprint.md"
    # Sections other benchmarks add (## Signal probe: signal_footprint.py) are kept.
    old = path.read_text() if path.exists() else ""
    later = old[old.index("\n## ") :] if "\n## " in old else ""
    path.write_text(report + later)
    print(report)


if __name__ == "__main__":
    main()
