"""`sinyal-agent once --json` wall time with 10 loopback ICMP targets.

Target: finishes within the round time plus 1 s. The round time is (count - 1) * spacing_s
= 1.8 s at the defaults (count 10, spacing 0.2 s); the agent also staggers the targets' starts
over one spacing so their packets do not leave at the same instant, which this budget
absorbs. Each run is a fresh process, so the time includes Python start-up, imports,
config loading and the spool write.

    .venv/bin/python benchmarks/once_latency.py [--runs 10]
Writes benchmarks/results/once-latency.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from common import BIN, RESULTS, loopback_config, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = loopback_config(Path(tmp))
        doc = yaml.safe_load(cfg_path.read_text())
        doc["probes"] = {"icmp": doc["probes"]["icmp"]}  # the target is about ICMP rounds
        cfg_path.write_text(yaml.safe_dump(doc))
        icmp = doc["probes"]["icmp"]
        count, spacing = icmp.get("count", 10), icmp.get("spacing_s", 0.2)
        round_s = (count - 1) * spacing
        walls: list[float] = []
        for _ in range(args.runs):
            t0 = time.monotonic()
            out = subprocess.run(
                [str(BIN / "sinyal-agent"), "once", "--json", "-c", str(cfg_path)],
                capture_output=True,
                text=True,
                check=True,
            )
            walls.append(time.monotonic() - t0)
            recs = [json.loads(ln) for ln in out.stdout.splitlines()]
            assert len(recs) == 10 and all(r["fields"]["ok"] == 1 for r in recs), out.stdout
    ok = max(walls) <= round_s + 1
    report = f"""# `once --json` latency

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.
10 loopback ICMP targets, count {count}, spacing {spacing} s; {args.runs} fresh processes.
Round time (count-1)*spacing = {round_s:.1f} s; target <= {round_s + 1:.1f} s.

| statistic | wall time |
|---|---|
| min | {min(walls):.2f} s |
| median | {statistics.median(walls):.2f} s |
| max | {max(walls):.2f} s |
| within target | {"yes" if ok else "NO"} |
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "once-latency.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
