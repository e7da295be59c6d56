"""Our throughput result against iperf3's on the same rate-limited path.

A network namespace holds the endpoint (sinyal-collector speedtest-server) and an iperf3
server; the veth to it is shaped with tbf: 20 Mbit/s down (server-side egress), 5 Mbit/s up
(client-side egress), 200 ms queues. Each round runs the agent's throughput probe (backend
mini, 10 s per direction, as deployed) and iperf3 for 10 s each way (-R for download; the
receiver's rate). Target: ours within 10 % of iperf3's, each direction.

Run as root: .venv/bin/python -m benchmarks.throughput_vs_iperf3
Writes benchmarks/results/throughput-vs-iperf3.md.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

# Run as a script (python benchmarks/X.py): the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import config as agent_config
from agent.probes.base import ProbeEnv
from agent.probes.throughput import ThroughputProbe
from benchmarks.common import RESULTS, ROOT, machine
from tests.harness.netns import Lab, sh
from tests.harness.speedtest_lab import shaped_endpoint, wait_listening

ROUNDS = 3
DOWN, UP = 20, 5


def iperf3(server: str, source: str, reverse: bool) -> float:
    """Mbit/s as iperf3's receiver counted it."""
    cmd = ["iperf3", "-c", server, "-B", source, "-t", "10", "-J", *(["-R"] if reverse else [])]
    out = json.loads(sh(*cmd, timeout=60).stdout)
    return float(out["end"]["sum_received"]["bits_per_second"]) / 1e6


def main() -> None:
    rows: list[tuple[str, float, float, float, float, float]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        Lab() as lab,
        shaped_endpoint(lab, DOWN, UP, 200) as shaped,
    ):
        far, near = shaped.link.far_addr, shaped.link.near_addr
        lab.spawn(shaped.link.far, "iperf3", "-s", "-B", far)
        wait_listening(far, 5201)
        doc = {
            "station": {"id": "3171011001001", "lat": -6.17, "lon": 106.82,
                        "tz": "Asia/Jakarta"},
            "uplinks": [{"name": "lab", "operator": "lab", "source": near}],
            "probes": {"throughput": {"backend": "mini", "url": shaped.url}},
            "data_dir": f"{tmp}/data",
            "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
        }  # fmt: skip
        (Path(tmp) / "agent.yaml").write_text(yaml.safe_dump(doc))
        cfg = agent_config.load(Path(tmp) / "agent.yaml", environ={})
        assert cfg.probes.throughput is not None
        probe = ThroughputProbe(cfg.probes.throughput, ProbeEnv(cfg))
        for i in range(ROUNDS):
            (rec,) = asyncio.run(probe.run())
            assert rec.error is None, rec
            down, up = iperf3(far, near, True), iperf3(far, near, False)
            f = rec.fields
            ours_d, ours_u = float(f["download_mbps"]), float(f["upload_mbps"])
            inc = float(f["loaded_latency_increase_ms"])
            rows.append((f"{i + 1}", ours_d, down, ours_u, up, inc))
            print(rows[-1], f["idle_latency_ms"], f["download_latency_ms"],
                  f["upload_latency_ms"])  # fmt: skip

    def pct(a: float, b: float) -> str:
        return f"{100 * (a - b) / b:+.1f} %"

    worst = max(max(abs(r[1] - r[2]) / r[2], abs(r[3] - r[4]) / r[4]) for r in rows)
    lines = [
        "# Throughput: our probe against iperf3 on the same shaped path",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
        f"veth into a namespace, tbf {DOWN} Mbit/s down (server egress) and {UP} Mbit/s up "
        "(client egress), 200 ms queues. Ours: the throughput probe, backend mini against "
        "`sinyal-collector speedtest-server`, 10 s per direction (speedtest-cli's code). "
        "iperf3 3.12: 10 s, one TCP stream, the receiver's rate. Target: within 10 %.",
        "",
        "| round | ours down | iperf3 down | diff | ours up | iperf3 up | diff | "
        "loaded latency increase |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {d:.2f} | {di:.2f} | {pct(d, di)} | {u:.2f} | {ui:.2f} | {pct(u, ui)} | "
        f"{inc:.0f} ms |"
        for n, d, di, u, ui, inc in rows
    ]
    lines += [
        "",
        f"Largest difference: {100 * worst:.1f} % "
        f"({'within' if worst <= 0.1 else 'OUTSIDE'} 10 %).",
    ]
    (RESULTS / "throughput-vs-iperf3.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
