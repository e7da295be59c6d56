"""Collector CPU per envelope: the served collector's own CPU time per request it answers.

Starts a real influxd (Debian's 1.6.7, loopback) and `python -m collector.cli serve` from this
checkout as a process of its own, registers --stations stations with a token each, lets every
station report once (the status engine knows it, its series are cached: election day after
its first minute), then posts pre-built, unique gzip envelopes of each shape to
POST /api/v1/stations/{station}/measurements, stations in turn, from --concurrency keep-alive
connections of a minimal client (benchmarks/common.py post_http: requests built before the
clock starts, a few % of a core) for --seconds each. The collector's CPU time comes from
/proc/<pid>/stat (user + system) around each phase; divided by the envelopes (and records)
it acknowledged, it is what an envelope costs the collector, its database writes included
(not InfluxDB's side of them). Shapes: 4 ICMP records (what an agent sends a minute, without
the heartbeat), 100 ICMP records (a station's backlog, per point).

    python benchmarks/envelope_cpu.py [--seconds 15] [--concurrency 32] [--stations 2000]
        [--profile DIR] [--note TEXT]

Writes benchmarks/results/envelope-cpu.md (the run's table; the hand-written history below
the marker line is kept). --profile DIR: py-spy records the collector in each phase
(raw collapsed stacks, DIR/<shape>.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import BIN, RESULTS, machine, machine_busy, post_http, proc_sample
from ingest import accepts, build_batches, envelope_body, stations_csv

from agent.uploader import upload_path
from collector.registry import Registry
from tests.harness.dbs import free_port, influxd

ROOT = Path(__file__).resolve().parent.parent
OUT = RESULTS / "envelope-cpu.md"
MARKER = "<!-- history: kept by benchmarks/envelope_cpu.py -->"
SHAPES = (4, 100)


@dataclass
class Phase:
    records: int  # per envelope
    envelopes: int
    seconds: float
    cpu_s: float  # the collector's
    influx_cpu_s: float
    machine_s: float
    latencies: list[float]

    @property
    def per_envelope_ms(self) -> float:
        return 1000 * self.cpu_s / self.envelopes

    @property
    def per_record_us(self) -> float:
        return 1e6 * self.cpu_s / (self.envelopes * self.records)

    def row(self) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
        return (
            f"| {self.records} | {self.envelopes / self.seconds:,.0f} "
            f"| {100 * self.cpu_s / self.seconds:.0f} % | **{self.per_envelope_ms:.3f} ms** "
            f"| **{self.per_record_us:.1f} µs** "
            f"| {100 * self.influx_cpu_s / self.seconds:.0f} % "
            f"| {100 * self.machine_s / self.seconds:.0f} % | {p50:.1f} ms | {p99:.1f} ms |"
        )


HEADER = (
    "| records per envelope | envelopes/s | collector CPU | per envelope | per record"
    " | InfluxDB CPU | machine busy | ack p50 | ack p99 |"
)


def cpu(pid: int) -> float:
    return proc_sample(pid)[0]


def wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("collector did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--profile", metavar="DIR", help="py-spy the collector in each phase")
    ap.add_argument("--note", default="", help="what this run is (in the results file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s, influxd("/usr/bin/influxd") as db:
        tmp = Path(tmp_s)
        db.create_database("bench")
        ids = stations_csv(tmp / "stations.csv", args.stations)
        (tmp / "collector").mkdir()
        reg = Registry(tmp / "collector" / "registry.sqlite3")
        reg.import_stations_csv(tmp / "stations.csv")
        tokens = {info.scope_value: t for info, t in reg.add_tokens([(s, None) for s in ids])}
        reg.close()

        def requests(
            batches: list[list[dict[str, object]]],
        ) -> tuple[list[tuple[bytes, dict[str, str]]], list[str]]:
            bodies, paths = [], []
            for b in batches:
                station = str(b[0]["tags"]["station"])  # type: ignore[index]
                headers = {
                    "Authorization": f"Bearer {tokens[station]}",
                    "Content-Encoding": "gzip",
                    "Content-Type": "application/json",
                }
                bodies.append((envelope_body(b), headers))
                paths.append(upload_path(station))
            return bodies, paths

        warm = build_batches(ids, len(ids), 1, per_station=True)
        for b in warm:
            b[0]["tags"]["target"] = "warm-up"  # a series of its own: never overwrites
        # More envelopes than can be sent in --seconds (about 3,000/s and 150/s at most here).
        count = {4: int(4000 * args.seconds), 100: int(300 * args.seconds)}
        print("building envelopes…", flush=True)
        shaped = {n: requests(build_batches(ids, count[n], n, per_station=True)) for n in SHAPES}
        warm_req = requests(warm)

        port = free_port()
        cfg = {
            "listen": {"host": "127.0.0.1", "port": port},
            "sink": {"kind": "v1", "url": db.url, "database": "bench"},
            "limits": {"requests_per_s": 1e6, "requests_burst": 10**7,
                       "records_per_s": 1e7, "records_burst": 10**9},
            "data_dir": str(tmp / "collector"),
            "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
            "status": {"sweeper": False},
        }  # fmt: skip
        (tmp / "collector.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "serve", "-c", str(tmp / "collector.yaml")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        url = f"http://127.0.0.1:{port}/"
        phases: list[Phase] = []
        try:
            wait_healthy(port, proc)
            asyncio.run(post_http(url, warm_req[0], 600, args.concurrency, accepts(1), warm_req[1]))
            for n in SHAPES:
                spy = None
                if args.profile:
                    Path(args.profile).mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        [str(BIN / "py-spy"), "record", "-p", str(proc.pid), "-f", "raw",
                         "-o", f"{args.profile}/{n}.txt", "-d", str(int(args.seconds))],
                        stdout=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(1)
                bodies, paths = shaped[n]
                c0, i0, m0 = cpu(proc.pid), cpu(db.process.pid), machine_busy()
                done, elapsed, lat = asyncio.run(
                    post_http(url, bodies, args.seconds, args.concurrency, accepts(n), paths)
                )
                c1, i1, m1 = cpu(proc.pid), cpu(db.process.pid), machine_busy()
                phases.append(Phase(n, done, elapsed, c1 - c0, i1 - i0, m1 - m0, lat))
                print(phases[-1].row(), flush=True)
                if spy is not None:
                    spy.wait(60)
        finally:
            proc.terminate()
            proc.wait(10)

    rows = "\n".join(p.row() for p in phases)
    history = ""
    if OUT.exists() and MARKER in OUT.read_text():
        history = OUT.read_text().split(MARKER, 1)[1]
    note = f" {args.note}" if args.note else ""
    OUT.write_text(
        f"""# Collector CPU per envelope

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, a machine shared with other
work.{note} Command: `python benchmarks/envelope_cpu.py --seconds {args.seconds:g}
--concurrency {args.concurrency} --stations {args.stations}`.

One `sinyal-collector serve` process (this checkout, uvicorn, sink v1 to InfluxDB 1.6.7 on
loopback, status engine on, sweeper off), {args.stations} stations each with its own token,
every station warmed with one report first. Unique pre-built gzip envelopes of one station's
ICMP records each, stations in turn, to `POST /api/v1/stations/{{station}}/measurements` from
{args.concurrency} keep-alive connections, as fast as the collector answers, for
{args.seconds:g} s per shape. CPU per envelope and per record = the collector process's CPU
time (user + system, /proc/<pid>/stat) in the phase ÷ what it acknowledged (every record of
every answer is checked accepted). Goals: at most 0.3 ms per 4-record envelope; per point for
100-record envelopes below the 22–34 µs measured before.

{HEADER}
|---|---|---|---|---|---|---|---|---|
{rows}

CPU in % of one core (200 % is both cores).

{MARKER}{history}"""
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
