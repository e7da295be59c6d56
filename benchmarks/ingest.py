"""Ingest throughput: agents -> collector -> InfluxDB 1.6.7, against writing directly.

Starts a real influxd (Debian's 1.6.7, loopback, temp dir) and `sinyal-collector serve` as a
separate process, registers --stations stations and one region token, then posts pre-built
gzip envelopes of --batch records from --concurrency clients for --seconds. In the same run
it posts the same line protocol directly to InfluxDB's /write with the same batch size and
concurrency: the ratio of the two rates is what the target is about (>= 0.6), and absolute
points/s (>= 25,000 on this 2-core machine) with the p50/p99 acknowledgement latency of a
batch. Both the load generator and the servers share the machine's cores.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--batch 100] [--concurrency 32]
Writes benchmarks/results/ingest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    BIN,
    RESULTS,
    children_of,
    machine,
    machine_busy,
    post_http,
    proc_sample,
    stations_csv,
    wait_healthy,
)

from agent.contract.record import Record, format_time
from collector.lineproto import record_to_point
from collector.registry import Registry
from tests.harness.dbs import deploy_influx_tuning, free_port, influxd

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = json.loads((ROOT / "tests" / "fixtures" / "records" / "icmp-ok.json").read_text())


def build_batches(
    ids: list[str], count: int, size: int, per_station: bool
) -> list[list[dict[str, Any]]]:
    """`count` batches of `size` distinct records (distinct series+time: no overwrites).

    per_station: each batch is one station's records (what an agent uploads: its 10 targets'
    rounds), stations in turn. Otherwise each batch mixes `size` stations (a region token).
    """
    base = datetime.now(UTC) - timedelta(hours=1)
    batches = []
    n = 0
    for b in range(count):
        batch = []
        for i in range(size):
            rec = json.loads(json.dumps(TEMPLATE))
            rec["id"] = uuid.uuid4().hex
            rec["tags"]["station"] = ids[b % len(ids)] if per_station else ids[n % len(ids)]
            rec["tags"]["target"] = f"target{i % 10}"
            rec["measured_at"] = format_time(base + timedelta(microseconds=n))
            batch.append(rec)
            n += 1
        batches.append(batch)
    return batches


def envelope_body(batch: list[dict[str, Any]]) -> bytes:
    env = {
        "schema": 1,
        "agent": {"station": batch[0]["tags"]["station"], "version": "bench"},
        "sent_at": format_time(datetime.now(UTC)),
        "records": batch,
    }
    return gzip.compress(json.dumps(env).encode(), 1)


def accepts(expect: int) -> Callable[[int, bytes], None]:
    """A check that the answer is a success and, from the collector, accepts all `expect`."""

    def check(status: int, text: bytes) -> None:
        if status not in (200, 204):
            raise RuntimeError(f"HTTP {status}: {text[:300]!r}")
        if status == 200 and len(json.loads(text)["accepted"]) != expect:
            raise RuntimeError(f"not all accepted: {text[:300]!r}")

    return check


def drive(
    url: str | list[str],
    bodies: list[tuple[bytes, dict[str, str]]],
    seconds: float,
    concurrency: int,
    expect: int,
    route: list[int] | None = None,
) -> tuple[int, float, list[float]]:
    """Post (body, headers) in turn for `seconds`; returns (points, elapsed, latencies).
    Several urls: `route` is each body's (benchmarks.common.post_http)."""
    n, elapsed, latencies = asyncio.run(
        post_http(url, bodies, seconds, concurrency, accepts(expect), route=route)
    )
    return n * expect, elapsed, latencies


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1000


@dataclass
class Phase:
    name: str
    points: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float]  # process -> share of one core during the phase
    rss_mb: float | None = None
    stored: int | None = None
    machine: float = 0.0  # the whole machine's busy CPU, % of one core (kernel included)

    @property
    def rate(self) -> float:
        return self.points / self.seconds

    def row(self) -> str:
        p50, p99 = pct(self.latencies, 50), pct(self.latencies, 99)
        cpu = ", ".join(f"{k} {v:.0f} %" for k, v in self.cpu.items())
        return (
            f"| {self.name} | {self.rate:,.0f} | {len(self.latencies)} | {p50:.1f} ms "
            f"| {p99:.1f} ms | {cpu} | {self.machine:.0f} % |"
        )


PROCS = ("collector", "InfluxDB", "load generator")


def measured(
    name: str,
    pids: dict[str, list[int]],
    run: Callable[[], tuple[int, float, list[float]]],
) -> Phase:
    """Run one phase, sampling the CPU time of the given processes (and our own) around it;
    each name's processes counted together (the collector's worker processes)."""

    def cpu_s(p: list[int]) -> float:
        return sum(proc_sample(q)[0] for q in p)

    before = {k: cpu_s(p) for k, p in pids.items()}
    own0 = time.process_time()
    busy0 = machine_busy()
    points, seconds, lat = run()
    cpu = {k: 100 * (cpu_s(p) - before[k]) / seconds for k, p in pids.items()}
    cpu["load generator"] = 100 * (time.process_time() - own0) / seconds
    return Phase(name, points, seconds, lat, cpu, machine=100 * (machine_busy() - busy0) / seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--profile", metavar="FILE", help="py-spy the collector (raw output)")
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="a further agents phase with `serve --workers N` (N processes, each station's"
        " batches to one of them, as nginx routes them); 1: none",
    )
    ap.add_argument(
        "--influx",
        choices=("deploy", "stock"),
        default="deploy",
        help="InfluxDB's settings: deploy/influxdb's tuning (default) or influxd's defaults",
    )
    args = ap.parse_args()
    options, env = deploy_influx_tuning() if args.influx == "deploy" else ({}, {})
    max_batches = int(60_000 * args.seconds / args.batch)  # more than can be sent
    with (
        tempfile.TemporaryDirectory() as tmp_s,
        influxd("/usr/bin/influxd", data_options=options, env=env) as db,
    ):
        tmp = Path(tmp_s)
        for name in ("direct", "station", "region"):
            db.create_database(name)
        ids = stations_csv(tmp / "stations.csv", args.stations)
        (tmp / "collector").mkdir()
        reg = Registry(tmp / "collector" / "registry.sqlite3")
        reg.import_stations_csv(tmp / "stations.csv")
        tokens = {info.scope_value: t for info, t in reg.add_tokens([(s, None) for s in ids])}
        _, region_token = reg.add_token(region="3171", note="bench")
        auth_of = {f"Bearer {t}": s for s, t in tokens.items()}  # station of a token
        reg.close()

        def auth(token: str) -> dict[str, str]:
            return {
                "Authorization": f"Bearer {token}",
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
            }

        print(f"building 2 x {max_batches} batches of {args.batch}…", flush=True)
        station_batches = build_batches(ids, max_batches, args.batch, per_station=True)
        region_batches = build_batches(ids, max_batches, args.batch, per_station=False)
        station_bodies = [
            (envelope_body(b), auth(tokens[b[0]["tags"]["station"]])) for b in station_batches
        ]
        region_bodies = [(envelope_body(b), auth(region_token)) for b in region_batches]
        warm_batches = build_batches(ids, len(ids), 1, per_station=True)
        for b in warm_batches:
            b[0]["tags"]["target"] = "warm-up"  # a series of its own: never overwrites
        warm_bodies = [
            (envelope_body(b), auth(tokens[b[0]["tags"]["station"]])) for b in warm_batches
        ]
        extra = {"province": "DKI Jakarta", "regency": "Kota Jakarta Pusat"}
        line_bodies = [
            ("\n".join(record_to_point(Record.from_dict(r), extra) for r in b).encode(), {})
            for b in station_batches
        ]
        influx = {"InfluxDB": [db.process.pid]}
        n, conc, secs = args.batch, args.concurrency, args.seconds
        direct = measured(
            "direct /write (same lines)",
            influx,
            lambda: drive(f"{db.url}/write?db=direct&precision=ns", line_bodies, secs, conc, n),
        )
        phases = [direct]
        runs = [
            ("agents -> collector (one station per batch)", "station", station_bodies, 1),
            ("survey laptops -> collector (100 stations per batch)", "region", region_bodies, 1),
        ]
        if args.workers > 1:
            label = f"agents -> {args.workers} collector processes (`serve --workers`)"
            db.create_database("workers")
            runs.append((label, "workers", station_bodies, args.workers))
        for label, database, bodies, workers in runs:
            ports = [free_port() for _ in range(workers)]
            port = ports[0]
            cfg = {
                "listen": {"host": "127.0.0.1", "port": port},
                "sink": {"kind": "v1", "url": db.url, "database": database},
                # One region token carries the whole load: per-token limits out of reach.
                "limits": {
                    "requests_per_s": 1e6,
                    "requests_burst": 10**7,
                    "records_per_s": 1e7,
                    "records_burst": 10**9,
                },
                "data_dir": str(tmp / "collector"),
                "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
                "status": {"sweeper": False},
            }
            (tmp / "collector.yaml").write_text(yaml.safe_dump(cfg))
            # This checkout's collector (the installed entry point may be another tree's).
            serve = [
                sys.executable,
                "-m",
                "collector.cli",
                "serve",
                "-c",
                str(tmp / "collector.yaml"),
            ]
            if workers > 1:
                serve += ["--ports", ",".join(map(str, ports))]
            proc = subprocess.Popen(
                serve,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            try:
                for p in ports:
                    wait_healthy(f"http://127.0.0.1:{p}", proc)
                # Steady state: every station has reported once (the status engine knows
                # it, its series are cached), as a minute into election day. Each station
                # to one process (by a hash of its id, as nginx's `hash $station` does).
                urls = [f"http://127.0.0.1:{p}/api/v1/measurements" for p in ports]

                def route(
                    b: list[tuple[bytes, dict[str, str]]], workers: int = workers
                ) -> list[int] | None:
                    if workers == 1:
                        return None
                    return [
                        zlib.crc32(auth_of[h["Authorization"]].encode()) % workers for _, h in b
                    ]

                warm = drive(urls, warm_bodies, 600, conc, 1, route(warm_bodies))[0]
                routes = route(bodies)  # before the clock starts
                pids = [proc.pid, *children_of(proc.pid)] if workers > 1 else [proc.pid]
                if len(pids) != workers + (workers > 1):
                    raise RuntimeError(f"serve --ports: {len(pids) - 1} workers running")
                spy = None
                if args.profile and database == "station":
                    spy_cmd = [str(BIN / "py-spy"), "record", "-p", str(proc.pid)]
                    # CPU samples of all threads, raw (benchmarks/load.py's spy_summary reads it)
                    spy_cmd += ["-o", args.profile, "-f", "raw", "-d", str(int(secs))]
                    spy = subprocess.Popen(spy_cmd)
                phase = measured(
                    label,
                    {"collector": pids, **influx},
                    lambda b=bodies, u=urls, r=routes: drive(u, b, secs, conc, n, r),  # type: ignore[misc]
                )
                phase.rss_mb = max(proc_sample(p)[1] for p in pids)
                if spy is not None:
                    spy.wait(30)
            finally:
                proc.terminate()
                proc.wait(10)
            stored = db.query('SELECT count("id") FROM "icmp"', database)[0]["count"]
            phase.stored = stored - warm
            phases.append(phase)

    via = phases[1]
    rows = "\n".join(p.row() for p in phases)

    def cost_row(p: Phase) -> str:
        us = [1e4 * p.cpu.get(k, 0.0) / p.rate for k in PROCS]  # % of a core -> µs per point
        limit = (os.cpu_count() or 1) * 1e6 / sum(us)
        pairs = zip(us, PROCS, strict=True)
        cells = " | ".join(f"{u:.0f}" if k in p.cpu else "-" for u, k in pairs)
        return f"| {p.name} | {cells} | {sum(us):.0f} | {limit:,.0f} points/s |"

    cost_rows = "\n".join(cost_row(p) for p in phases)
    checks = "\n".join(
        f"- {p.name}: acknowledged {p.points:,}, stored {p.stored:,}; collector RSS "
        f"{p.rss_mb:.0f} MB"
        for p in phases[1:]
    )
    workers_line = ""
    if len(phases) > 3:
        w = phases[3]
        workers_line = (
            f"\n- ratio collector / direct (agents, {args.workers} collector processes, each"
            f" station's batches to one of them): **{w.rate / direct.rate:.2f}** (target >= 0.6)"
        )
    influx_settings = (
        "settings as deploy/influxdb ships them (tsi1, 256 MB cache snapshots, GOGC=200)"
        if args.influx == "deploy"
        else "influxd's default settings"
    )
    report = f"""# Ingest throughput

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.
InfluxDB 1.6.7 (Debian) on loopback, {influx_settings};
`sinyal-collector serve` (one uvicorn process; in the last phase `--workers {args.workers}`,
the batches of each station to one process by a hash of its id, as nginx routes them) with
sink v1; {args.stations} registered stations. Batches of {n} icmp records (gzip JSON
envelopes, 10 targets per station), {conc} concurrent clients, {secs:g} s per phase, all
phases in one run. Agents: one station's records per envelope, each station with its own
token (what `sinyal-agent` sends). Survey laptops: one region token, {n} stations per
envelope (the worst case for the status engine). Before each collector phase every station
reports once (one record, not counted), so the collector is measured in its steady state
(stations known). The direct baseline posts the agents' records as line protocol, {n} lines
per request, to /write with the same concurrency. Both phases are driven by the same minimal
HTTP/1.1 client (benchmarks/common.py `post_http`, requests built before the clock starts),
so the load generator takes a few % of a core, not the third of a core httpx took: what is
measured is the servers. "machine busy" is the whole machine's CPU from /proc/stat (kernel
work for loopback traffic included), in % of one core; 200 % is both cores.

| path | points/s | batches | p50 ack | p99 ack | CPU (% of one core) | machine busy |
|---|---|---|---|---|---|---|
{rows}

- ratio collector / direct (agents, one collector process): **{via.rate / direct.rate:.2f}**
  (target >= 0.6){workers_line}
- collector throughput (agents): **{via.rate:,.0f} points/s** (target >= 25,000)
- p99 acknowledgement of a {n}-record batch under that load: **{pct(via.latencies, 99):.0f} ms**
{checks}
  (every acknowledged point is in the database)

## Where the time goes

CPU per point, from the CPU each process used in its phase divided by the points written
(µs of one core per point), and the rate the whole machine ({os.cpu_count()} cores) would
reach if nothing else ran and every core went to these processes:

| path | per point: {" | ".join(PROCS)} | all | machine limit |
|---|{"---|" * len(PROCS)}---|---|
{cost_rows}

Benchmarks are not timed tests: the machine is shared and noisy; compare ratios from one run.
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.md").write_text(report)
    print(report)
    for p in phases[1:]:
        if p.stored != p.points:
            raise SystemExit(f"{p.name}: acknowledged {p.points} but stored {p.stored}")


if __name__ == "__main__":
    main()
