"""Where speedtest-cli's own throughput figure parts from the link's rate, on field-lab links.

Runs speedtest-cli unchanged (no loaded window, no connection slots, no ending of
stragglers) against the core's Speedtest Mini endpoint from a lab station, and traces each
phase: speedtest-cli's figure and phase time; the bytes it counted against those TCP
delivered (agent.tcpmeter: acknowledged by the server / received); the delivered rate in the
first second, in the loaded window (from agent.speedtest_worker.omit_s to the test length)
and in the tail after the length; how many requests were running (fewest during the length);
the longest time an upload request's thread went without handing data to its socket (a
send blocked on a connection in retransmission back-off).

    sudo .venv/bin/python benchmarks/accuracy/trace_speedtest.py [--length 10] [RATE[,DELAY]...]
Default rows: 2, 10, 10,150 (Mbit/s, ms). Prints; writes nothing. About 30 s a row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from agent import speedtest_worker, tcpmeter  # noqa: E402

PORT = 8081


def child(url: str, length: float) -> None:
    """In the station: one traced speedtest-cli test; JSON on stdout."""
    import speedtest

    meter = tcpmeter.Meter(interval_s=0.02)
    tcpmeter.install(meter)
    speedtest_worker.limit_unsent_data()
    requests: list[dict[str, float]] = []
    local = threading.local()

    def traced(real: Any) -> Any:
        def run(thread: Any) -> None:
            local.last = start = time.monotonic()
            local.stall = 0.0
            real(thread)
            end = time.monotonic()
            stall = max(local.stall, end - local.last)
            requests.append({"start": start, "end": end, "stall": stall})

        return run

    real_read = speedtest.HTTPUploaderData.read

    def read(data: Any, n: int = 10240) -> bytes:
        now = time.monotonic()
        local.stall = max(local.stall, now - local.last)
        local.last = now
        chunk: bytes = real_read(data, n)
        return chunk

    speedtest.HTTPUploaderData.read = read
    for cls in (speedtest.HTTPDownloader, speedtest.HTTPUploader):
        cls.run = traced(cls.run)
    job = {"backend": "mini", "url": url, "name": "core", "source": None,
           "duration_s": length, "socket_timeout_s": 120, "secure": False}  # fmt: skip
    st = speedtest_worker._make(job)
    out: dict[str, Any] = {}
    for phase in ("download", "upload"):
        requests.clear()
        meter.start()
        t0 = time.monotonic()
        bits = st.download() if phase == "download" else st.upload(pre_allocate=False)
        t1 = time.monotonic()
        series = speedtest_worker.one_way(meter.stop(), phase == "upload")
        counted = st.results.bytes_received if phase == "download" else st.results.bytes_sent
        ran = [r for r in requests if r["end"] - r["start"] > 0.001]

        def mbit(a: float, b: float, series: Any = series, t0: float = t0) -> float:
            return tcpmeter.window_rate(series, t0 + a, t0 + b) / 1e6 if b > a else 0.0

        steps = [t0 + k / 10 for k in range(5, int(length * 10))]  # after the first 0.5 s
        fewest = min(sum(r["start"] <= t < r["end"] for r in ran) for t in steps)
        out[phase] = {
            "speedtest_cli": bits / 1e6,
            "phase_s": t1 - t0,
            "counted": counted,
            "delivered": series[-1][1] - series[0][1],
            "first_s": mbit(0, 1),
            "loaded": mbit(speedtest_worker.omit_s(length), length),
            "tail": mbit(length, t1 - t0),
            "requests": len(ran),
            "fewest": fewest,
            # Downloads hand nothing to a socket: no stall figure.
            "stall_s": max((r["stall"] for r in ran), default=0.0) if phase == "upload" else None,
        }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="*", default=["2", "10", "10,150"])
    ap.add_argument("--length", type=float, default=10.0, help="seconds per direction")
    ap.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.length)
        return
    from tests.harness.lab import Lab

    with Lab() as lab:
        st, core = lab.station("trace"), lab.core()
        lab.spawn(core, sys.executable, "-m", "collector.cli", "speedtest-server",
                  "--host", core.addr, "--port", str(PORT),
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(3)  # the endpoint starts (uvicorn)
        print("| rate | delay | phase | speedtest-cli | phase s | counted / delivered MB | "
              "delivered: 1st s / loaded / tail | requests (fewest running) | "
              "longest upload stall s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for row in args.rows:
            rate, _, delay = row.partition(",")
            lab.impair(st, rate_mbit=float(rate), delay_ms=float(delay) if delay else None)
            proc = subprocess.run(
                [*st.prefix(), sys.executable, __file__, "--child",
                 f"http://{core.addr}:{PORT}/", "--length", str(args.length)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if proc.returncode != 0:
                print(f"| {rate} | {delay or 'none'} | failed: {proc.stderr[-300:]!r} |")
                continue
            for phase, v in json.loads(proc.stdout).items():
                print(
                    f"| {rate} Mbit/s | {delay + ' ms' if delay else 'none'} | {phase} | "
                    f"{v['speedtest_cli']:.2f} | {v['phase_s']:.1f} | "
                    f"{v['counted'] / 1e6:.2f} / {v['delivered'] / 1e6:.2f} | "
                    f"{v['first_s']:.2f} / {v['loaded']:.2f} / {v['tail']:.2f} | "
                    f"{v['requests']} ({v['fewest']}) | "
                    f"{'-' if v['stall_s'] is None else format(v['stall_s'], '.1f')} |",
                    flush=True,
                )
            lab.clear(st)


if __name__ == "__main__":
    main()
