"""Ingest throughput: agents -> collector -> InfluxDB 1.6.7, against writing directly.

Starts a real influxd (Debian's 1.6.7, loopback, temp dir) and `sinyal-collector serve` as a
separate process, registers --stations stations and one region token, then posts pre-built
gzip envelopes of --batch records from --concurrency clients for --seconds. In the same run
it posts the same line protocol directly to InfluxDB's /write with the same batch size and
concurrency: the ratio of the two rates is what the target is about (>= 0.6), and absolute
points/s (>= 25,000 on this 2-core machine) with the p50/p99 acknowledgement latency of a
batch. Both the load generator and the servers share the machine's cores.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--batch 100] [--concurrency 8]
Writes benchmarks/results/ingest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import BIN, RESULTS, machine, proc_sample

from agent.record import Record, format_time
from collector.lineproto import record_to_point
from collector.registry import Registry
from tests.dbs import free_port, influxd

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = json.loads((ROOT / "tests" / "fixtures" / "records" / "icmp-ok.json").read_text())


def stations_csv(path: Path, n: int) -> list[str]:
    ids = [f"3171{i // 1000:06d}{i % 1000:03d}" for i in range(n)]
    lines = ["id,name,province,regency,lat,lon,tz,expected_operator"]
    lines += [
        f"{s},TPS {s},DKI Jakarta,Kota Jakarta Pusat,-6.17,106.82,Asia/Jakarta,telkomsel"
        for s in ids
    ]
    path.write_text("\n".join(lines) + "\n")
    return ids


def build_batches(ids: list[str], count: int, size: int) -> list[list[dict[str, Any]]]:
    """`count` batches of `size` distinct records (distinct series+time: no overwrites)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    batches = []
    n = 0
    for _ in range(count):
        batch = []
        for _ in range(size):
            rec = json.loads(json.dumps(TEMPLATE))
            rec["id"] = uuid.uuid4().hex
            rec["tags"]["station"] = ids[n % len(ids)]
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


async def drive(
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    seconds: float,
    concurrency: int,
    expect: int,
) -> tuple[int, float, list[float]]:
    """Post bodies round-robin for `seconds`; returns (points confirmed, elapsed, latencies)."""
    latencies: list[float] = []
    done = 0
    next_i = 0
    t_end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal done, next_i
            while time.monotonic() < t_end and next_i < len(bodies):
                body = bodies[next_i]
                next_i += 1
                t0 = time.perf_counter()
                r = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                if r.status_code not in (200, 204):
                    raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
                if r.status_code == 200 and len(r.json()["accepted"]) != expect:
                    raise RuntimeError(f"not all accepted: {r.text[:300]}")
                done += expect

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.monotonic() - t0, latencies


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--profile", metavar="FILE", help="py-spy the collector (raw output)")
    args = ap.parse_args()
    max_batches = int(60_000 * args.seconds / args.batch)  # more than can be sent
    with tempfile.TemporaryDirectory() as tmp_s, influxd("/usr/bin/influxd") as db:
        tmp = Path(tmp_s)
        db.create_database("direct")
        db.create_database("viacollector")
        ids = stations_csv(tmp / "stations.csv", args.stations)
        port = free_port()
        cfg = {
            "listen": {"host": "127.0.0.1", "port": port},
            "sink": {"kind": "v1", "url": db.url, "database": "viacollector"},
            "data_dir": str(tmp / "collector"),
            "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
            "status": {"sweeper": False},
        }
        (tmp / "collector.yaml").write_text(yaml.safe_dump(cfg))
        (tmp / "collector").mkdir()
        reg = Registry(tmp / "collector" / "registry.sqlite3")
        reg.import_stations_csv(tmp / "stations.csv")
        _, token = reg.add_token(region="3171", note="bench")
        reg.close()
        print(f"building {max_batches} batches of {args.batch}…", flush=True)
        batches = build_batches(ids, max_batches, args.batch)
        env_bodies = [envelope_body(b) for b in batches]
        line_bodies = [
            "\n".join(
                record_to_point(
                    Record.from_dict(r),
                    {"province": "DKI Jakarta", "regency": "Kota Jakarta Pusat"},
                )
                for r in b
            ).encode()
            for b in batches
        ]

        direct_url = f"{db.url}/write?db=direct&precision=ns"
        db_cpu0, own0 = proc_sample(db.process.pid)[0], time.process_time()
        direct = asyncio.run(
            drive(direct_url, line_bodies, {}, args.seconds, args.concurrency, args.batch)
        )
        db_cpu1, own1 = proc_sample(db.process.pid)[0], time.process_time()
        proc = subprocess.Popen(
            [str(BIN / "sinyal-collector"), "serve", "-c", str(tmp / "collector.yaml")]
        )
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            cpu0, _ = proc_sample(proc.pid)
            db_cpu2, own2 = proc_sample(db.process.pid)[0], time.process_time()
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "-p",
                        str(proc.pid),
                        "-o",
                        args.profile,
                        "-f",
                        "raw",
                        "--gil",
                        "-d",
                        str(int(args.seconds)),
                    ]
                )
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
            }
            via = asyncio.run(
                drive(
                    f"http://127.0.0.1:{port}/api/v1/measurements",
                    env_bodies,
                    headers,
                    args.seconds,
                    args.concurrency,
                    args.batch,
                )
            )
            cpu1, rss = proc_sample(proc.pid)
            db_cpu3, own3 = proc_sample(db.process.pid)[0], time.process_time()
            if spy is not None:
                spy.wait(30)
        finally:
            proc.terminate()
            proc.wait(10)
        stored = db.query('SELECT count("id") FROM "icmp"', "viacollector")[0]["count"]

    def row(name: str, rate: float, lat: list[float]) -> str:
        p50, p99 = pct(lat, 50), pct(lat, 99)
        return f"| {name} | {rate:,.0f} | {len(lat)} | {p50:.1f} ms | {p99:.1f} ms |"

    d_rate = direct[0] / direct[1]
    v_rate = via[0] / via[1]
    report = f"""# Ingest throughput

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.
InfluxDB 1.6.7 (Debian) on loopback; `sinyal-collector serve` (one uvicorn process) with
sink v1; {args.stations} registered stations, one region token; batches of {args.batch}
icmp records (gzip JSON envelopes), {args.concurrency} concurrent clients, {args.seconds:g} s
per phase. The direct baseline posts the same line protocol, {args.batch} lines per request,
to /write with the same concurrency, in the same run.

| path | points/s | batches | p50 ack | p99 ack |
|---|---|---|---|---|
{row("direct /write", d_rate, direct[2])}
{row("agents -> collector -> InfluxDB", v_rate, via[2])}

- ratio collector / direct: **{v_rate / d_rate:.2f}** (target >= 0.6)
- collector throughput: **{v_rate:,.0f} points/s** (target >= 25,000)
- collector CPU during its phase: {100 * (cpu1 - cpu0) / via[1]:.0f} % of one core; RSS {rss:.0f} MB
- InfluxDB CPU: {100 * (db_cpu1 - db_cpu0) / direct[1]:.0f} % (direct phase),
  {100 * (db_cpu3 - db_cpu2) / via[1]:.0f} % (collector phase); load generator CPU:
  {100 * (own1 - own0) / direct[1]:.0f} % and {100 * (own3 - own2) / via[1]:.0f} %
- points the collector acknowledged: {via[0]:,}; points stored in InfluxDB: {stored:,}
  (every acknowledged point is in the database)

Benchmarks are not timed tests: the machine is shared and noisy; compare ratios from one run.
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.md").write_text(report)
    print(report)
    if stored != via[0]:
        raise SystemExit(f"acknowledged {via[0]} but stored {stored}")


if __name__ == "__main__":
    main()
