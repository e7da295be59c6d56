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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import BIN, RESULTS, machine, machine_busy, post_http, proc_sample, wait_healthy
from ingest import accepts, build_batches, envelope_body, stations_csv

from agent.uploader import upload_path
from collector.registry import Registry
from tests.harness.dbs import free_port, influxd

ROOT = Path(__file__).resolve().parent.parent
OUT = RESULTS / "envelope-cpu.md"
MARKER = "<!-- history: kept by benchmarks/envelope_cpu.py -->"
SHAPES = (4, 100)
Req = tuple[bytes, dict[str, str]]


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

    def row(self, label: str) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
        return (
            f"| {label} | {self.records} | {self.envelopes / self.seconds:,.0f} "
            f"| {100 * self.cpu_s / self.seconds:.0f} % | **{self.per_envelope_ms:.3f} ms** "
            f"| **{self.per_record_us:.1f} µs** "
            f"| {100 * self.influx_cpu_s / self.seconds:.0f} % "
            f"| {100 * self.machine_s / self.seconds:.0f} % | {p50:.1f} ms | {p99:.1f} ms |"
        )


HEADER = (
    "| collector | records per envelope | envelopes/s | collector CPU | per envelope | per record"
    " | InfluxDB CPU | machine busy | ack p50 | ack p99 |"
)


def cpu(pid: int) -> float:
    return proc_sample(pid)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--profile", metavar="DIR", help="py-spy the collector in each phase")
    ap.add_argument("--note", default="", help="what this run is (in the results file)")
    ap.add_argument("--rounds", type=int, default=1, help="phases per shape and checkout")
    ap.add_argument(
        "--against",
        nargs="*",
        default=[],
        metavar="DIR",
        help="other checkouts (e.g. `git archive` of an older commit) measured in the same"
        " run, phases alternating with this one's",
    )
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

        def requests(batches: list[list[dict[str, object]]]) -> tuple[list[Req], list[str]]:
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

        def envelopes(n: int, count: int, series: str | None) -> tuple[list[Req], list[str]]:
            """`count` unique envelopes of `n` records. The stations' usual series (10
            targets), at times of their own (build_batches counts microseconds from the
            moment it is called, and no set spans a second); `series`: targets named after
            it instead (the warm-up of each checkout)."""
            batches = build_batches(ids, count, n, per_station=True)
            if series is not None:
                for b in batches:
                    for i, rec in enumerate(b):
                        rec["tags"]["target"] = f"{series}-{i % 10}"  # type: ignore[index]
            return requests(batches)

        checkouts = [ROOT, *(Path(d).resolve() for d in args.against)]
        # More envelopes than can be sent in --seconds (about 2,000/s and 150/s at most here).
        count = {4: int(2500 * args.seconds), 100: int(200 * args.seconds)}
        procs: list[subprocess.Popen[bytes]] = []
        urls: list[str] = []
        phases: list[tuple[str, Phase]] = []
        try:
            for k, checkout in enumerate(checkouts):
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
                (tmp / f"collector{k}.yaml").write_text(yaml.safe_dump(cfg))
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "collector.cli",
                            "serve",
                            "-c",
                            str(tmp / f"collector{k}.yaml"),
                        ],
                        cwd=checkout,
                        env={**os.environ, "PYTHONPATH": str(checkout)},
                    )
                )
                urls.append(f"http://127.0.0.1:{port}/")
                wait_healthy(f"http://127.0.0.1:{port}", procs[-1])
                warm_bodies, warm_paths = envelopes(1, len(ids), f"warm{k}")
                asyncio.run(
                    post_http(urls[-1], warm_bodies, 600, args.concurrency, accepts(1), warm_paths)
                )
            for n in SHAPES:
                for r in range(args.rounds):
                    for k, (checkout, proc, url) in enumerate(
                        zip(checkouts, procs, urls, strict=True)
                    ):
                        print(f"{n} records, round {r + 1}, {checkout}: building…", flush=True)
                        bodies, paths = envelopes(n, count[n], None)
                        spy = None
                        if args.profile and k == 0 and r == 0:
                            Path(args.profile).mkdir(parents=True, exist_ok=True)
                            spy = subprocess.Popen(
                                [str(BIN / "py-spy"), "record", "-p", str(proc.pid), "-f",
                                 "raw", "-o", f"{args.profile}/{n}.txt", "-d",
                                 str(int(args.seconds))],
                                stdout=subprocess.DEVNULL,
                            )  # fmt: skip
                            time.sleep(1)
                        c0, i0, m0 = cpu(proc.pid), cpu(db.process.pid), machine_busy()
                        done, elapsed, lat = asyncio.run(
                            post_http(
                                url, bodies, args.seconds, args.concurrency, accepts(n), paths
                            )
                        )
                        c1, i1, m1 = cpu(proc.pid), cpu(db.process.pid), machine_busy()
                        phase = Phase(n, done, elapsed, c1 - c0, i1 - i0, m1 - m0, lat)
                        label = "this checkout" if k == 0 else f"`{checkout.name}`"
                        phases.append((label, phase))
                        print(phase.row(label), flush=True)
                        if spy is not None:
                            spy.wait(60)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)

    rows = "\n".join(p.row(label) for label, p in phases)
    history = ""
    if OUT.exists() and MARKER in OUT.read_text():
        history = OUT.read_text().split(MARKER, 1)[1]
    note = f" {args.note.rstrip('.')}." if args.note else ""
    against = "".join(f" --against {d}" for d in args.against)
    OUT.write_text(
        f"""# Collector CPU per envelope

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, a machine shared with other
work.{note} Command: `python benchmarks/envelope_cpu.py --seconds {args.seconds:g}
--concurrency {args.concurrency} --stations {args.stations} --rounds {args.rounds}{against}`.

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
|---|---|---|---|---|---|---|---|---|---|
{rows}

CPU in % of one core (200 % is both cores).

{MARKER}{history}"""
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
