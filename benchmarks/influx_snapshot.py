"""InfluxDB's cache snapshot at fleet scale: what writing a fleet's minute to TSM costs.

InfluxDB 1.x keeps new points in a cache and writes it to a TSM file (a "snapshot") when it
reaches `cache-snapshot-memory-size`. A snapshot handles every key in the cache (series x
field: 14 for an icmp point, 12 for the heartbeat), so a fleet whose every series gets a point
a minute brings all its keys to every snapshot. This measures that cost on its own, with no
collector, nginx or load generator: the stations' records (the fleet simulator's, encoded by
the collector's own line protocol code, as benchmarks/load.py sends them) are written
straight to InfluxDB (Debian's 1.6.7, deploy/influxdb's settings unless overridden), one
round per station a minute of measurement time, then InfluxDB is left idle until it
snapshots the cache (`cache-snapshot-write-cold-duration`, set short here).

For each GOGC given: the write path's CPU per point, then the snapshot: its wall time (as
InfluxDB counts it), InfluxDB's CPU over it, per cache key, and the garbage collections that
fell inside it.

    .venv/bin/python benchmarks/influx_snapshot.py [--stations 100000] [--rounds 2]
        [--gogc 200,400]
Writes benchmarks/results/influx-snapshot.md. Needs influxd (Debian).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import httpx

# Run as a script (python benchmarks/X.py): the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, machine, proc_sample
from benchmarks.load import debug_vars, influx_engine
from benchmarks.simulate import SimConfig, SimStation, StationToken
from benchmarks.wrkload import next_round
from collector.lineproto import record_to_point
from tests.harness.dbs import deploy_influx_tuning, influxd

EXTRA = {"province": "Papua", "regency": "Kabupaten Jayapura"}
BATCH = 5000  # lines per write
WRITERS = 4  # concurrent writes


def station_lines(n: int, rounds: int, targets: int) -> list[list[str]]:
    """Each round's lines: every station's records (targets icmp + the heartbeat), the
    rounds a minute apart, an hour ago."""
    tokens = [StationToken(f"9{s:012d}", "unused") for s in range(n)]
    cfg = SimConfig("http://unused", tokens, targets=targets)
    start = time.time() - 3600
    out: list[list[str]] = [[] for _ in range(rounds)]
    for s, tok in enumerate(tokens):
        st = SimStation(s, tok, "good4g", cfg, time.monotonic_ns())
        first = st.make_round(start + s * 60 / n, 60)
        for k in range(rounds):
            recs = first if k == 0 else next_round(st, first, k, start + k * 60 + s * 60 / n)
            out[k].extend(record_to_point(r, EXTRA) for r in recs)
    return out


def keys(url: str, database: str) -> int:
    """Series x fields of the database: the keys a snapshot of every series handles."""
    total = 0
    q = {"db": database}
    fields = httpx.post(f"{url}/query", data={**q, "q": "SHOW FIELD KEYS"}, timeout=60).json()
    per = {s["name"]: len(s["values"]) for s in fields["results"][0].get("series", [])}
    for name, nfields in per.items():
        r = httpx.post(
            f"{url}/query",
            data={**q, "q": f'SHOW SERIES EXACT CARDINALITY FROM "{name}"'},
            timeout=600,
        ).json()
        series = r["results"][0].get("series", [])
        total += nfields * (int(series[0]["values"][0][0]) if series else 0)
    return total


@dataclasses.dataclass
class Result:
    gogc: str
    write_us_per_point: list[float]  # each round's InfluxDB CPU per point
    snapshot_s: float  # as InfluxDB counts it
    snapshot_cpu_s: float  # InfluxDB's CPU from the round's end until the snapshot was done
    keys: int
    gcs: int  # garbage collections in that time
    heap_gb: float  # after the snapshot
    settings: str


def measure(gogc: str, rounds: list[list[str]], options: dict[str, Any]) -> Result:
    _, env = deploy_influx_tuning()
    env = {**env, "GOGC": gogc}
    with influxd("/usr/bin/influxd", data_options=options, env=env) as db:
        httpx.post(f"{db.url}/query", data={"q": "CREATE DATABASE snap"}, timeout=30)
        pid = db.process.pid
        per_point = []
        with httpx.Client(timeout=600) as client:

            def post(body: bytes) -> None:
                r = client.post(f"{db.url}/write", params={"db": "snap"}, content=body)
                r.raise_for_status()

            for lines in rounds:
                bodies = [
                    "\n".join(lines[i : i + BATCH]).encode() for i in range(0, len(lines), BATCH)
                ]
                c0 = proc_sample(pid)[0]
                with cf.ThreadPoolExecutor(WRITERS) as ex:
                    list(ex.map(post, bodies))
                per_point.append(1e6 * (proc_sample(pid)[0] - c0) / len(lines))
        before = influx_engine(debug_vars(db.url))
        if before["snapshots"]:
            raise RuntimeError(
                "InfluxDB snapshotted while the rounds were written: raise"
                " cache-snapshot-memory-size or write fewer rounds"
            )
        c0 = proc_sample(pid)[0]
        deadline = time.monotonic() + 900
        after, v = before, {}
        while after["snapshots"] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("InfluxDB did not snapshot its cache within 15 minutes")
            time.sleep(0.5)
            v = debug_vars(db.url)
            after = influx_engine(v)
        cpu = proc_sample(pid)[0] - c0
        return Result(
            gogc=gogc,
            write_us_per_point=per_point,
            snapshot_s=after["snapshot_s"],
            snapshot_cpu_s=cpu,
            keys=keys(db.url, "snap"),
            gcs=int(after["gc"] - before["gc"]),
            heap_gb=v["memstats"]["HeapAlloc"] / 2**30,
            settings=", ".join(f"{k} = {val}" for k, val in sorted(options.items())),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2, help="minutes of records in the cache")
    ap.add_argument("--targets", type=int, default=3, help="icmp records per station a round")
    ap.add_argument("--gogc", default="200,400", help="GOGC values, comma-separated")
    args = ap.parse_args()
    options, _ = deploy_influx_tuning()
    # the whole write stays in the cache; the snapshot comes when writes stop
    options = {
        **options,
        "cache-snapshot-memory-size": 8 * 2**30,
        "cache-max-memory-size": 16 * 2**30,
        "cache-snapshot-write-cold-duration": "5s",
    }
    t0 = time.monotonic()
    rounds = station_lines(args.stations, args.rounds, args.targets)
    print(f"built {sum(map(len, rounds)):,} lines in {time.monotonic() - t0:.0f} s", flush=True)
    results = []
    for gogc in args.gogc.split(","):
        r = measure(gogc, rounds, options)
        print(r, flush=True)
        results.append(r)
    write(results, args)


def write(results: list[Result], args: argparse.Namespace) -> None:
    points = args.stations * (args.targets + 1)
    lines = [
        "# InfluxDB's cache snapshot at fleet scale",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} UTC on {machine()} with"
        " `benchmarks/influx_snapshot.py"
        f" --stations {args.stations} --rounds {args.rounds} --targets {args.targets}"
        f" --gogc {args.gogc}` (see its docstring). InfluxDB 1.6.7 (Debian) alone on the"
        " machine: no collector, nginx or load generator.",
        "",
        f"{args.stations:,} stations, {args.rounds} rounds a minute apart of {args.targets}"
        f" icmp records and the heartbeat each ({points:,} points a round), written"
        f" {BATCH:,} lines a request, {WRITERS} requests at once, all into the cache; then"
        " InfluxDB snapshots the cache to TSM on its own. Settings: deploy/influxdb's, with"
        " the cache limits raised and a short cold duration so that everything written stays"
        f" in the cache until the writes stop (`{results[0].settings}`), GOGC as in the"
        " table. The CPU over the snapshot is counted from the writes' end (InfluxDB idles"
        " for the cold duration first) to the snapshot's end.",
        "",
        "| GOGC | InfluxDB CPU per point written, by round | cache keys (series x fields)"
        " | snapshot (InfluxDB's count) | InfluxDB CPU over it | CPU per key"
        " | garbage collections in it | heap after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.gogc} | {', '.join(f'{x:.0f} µs' for x in r.write_us_per_point)}"
            f" | {r.keys:,} | {r.snapshot_s:.1f} s | {r.snapshot_cpu_s:.1f} s"
            f" | {1e6 * r.snapshot_cpu_s / max(1, r.keys):.1f} µs | {r.gcs}"
            f" | {r.heap_gb:.1f} GB |"
        )
    lines += [
        "",
        "A snapshot's cost grows with the keys in the cache, not with the points: a fleet"
        " whose every series has a point a minute pays it in full for every snapshot that"
        " holds less than a minute of points. What this means for a node's sizing, and what"
        " benchmarks/load.py saw when snapshots ran beside the fleet's writes:"
        " docs/operations.md, load.md.",
        "",
        "Benchmarks are not timed tests: the machine is shared and noisy; compare figures"
        " from one run.",
        "",
    ]
    out = RESULTS / "influx-snapshot.md"
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
