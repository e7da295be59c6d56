"""Load: simulated fleets reporting every minute into one collector and InfluxDB 1.6.7.

Starts a real influxd (Debian's 1.6.7, loopback, temp dir, `tests.harness.dbs.influxd`), registers
the largest fleet's stations and issues their tokens with the real CLI
(`sinyal-collector stations import`, `agents add --all-stations --out tokens.csv`), then for
each fleet size:

1. starts `sinyal-collector serve` (a separate process, sink v1, its own database) and runs
   the fleet simulator's Python API (benchmarks.simulate.run: each station its own token, one
   gzip envelope per round of 3 icmp records + a heartbeat, rounds spread over the 60 s
   interval by the real scheduler's offsets) for --seconds, in --generators child processes;
   samples the CPU of the collector, InfluxDB and the generators from /proc, the
   collector's RSS every second, and (with --py-spy) profiles the collector;
2. checks that every acknowledged record is in InfluxDB;
3. writes the same kind of line protocol (the simulator's records, encoded by the
   collector's own encoder, one station's round per request) straight to InfluxDB's /write
   with the same concurrency, as fast as it goes, for --direct-seconds: the baseline.

    .venv/bin/python benchmarks/load.py [--sizes 1000,10000,100000] [--seconds 120]
        [--generators 1,1,2] [--concurrency 64] [--py-spy]
Writes benchmarks/results/load.md (and load.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import BIN, RESULTS, machine, post_http, proc_sample
from ingest import pct, stations_csv

from benchmarks import simulate
from benchmarks.simulate import SimConfig, SimStation, StationToken
from collector.lineproto import record_to_point
from tests.harness.dbs import free_port, influxd

ROOT = Path(__file__).resolve().parent.parent
REGION = {"province": "DKI Jakarta", "regency": "Kota Jakarta Pusat"}


def generator(cfg: SimConfig, out: Any) -> None:
    """One load-generator process: run the fleet part, hand back the report."""
    out.put(asyncio.run(simulate.run(cfg)))


class RssWatch:
    """Peak RSS of a process, sampled every second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.peak = max(self.peak, proc_sample(self.pid)[1])
            except OSError:
                return

    def done(self) -> float:
        self.stop.set()
        self.thread.join(5)
        return max(self.peak, proc_sample(self.pid)[1])


@dataclass
class Run:
    size: int
    generators: int
    report: simulate.Report
    seconds: float  # wall time of the whole run (rounds + drain)
    cpu: dict[str, float]  # share of one core over the run
    rss_mb: float
    stored: int
    direct_rate: float = 0.0
    direct_lat: list[float] = field(default_factory=list)
    direct_cpu: dict[str, float] = field(default_factory=dict)
    spy: tuple[list[tuple[str, float]], list[tuple[str, float]]] = ([], [])
    in_flight: int = 0  # uploads in flight at most, all generator processes

    @property
    def offered(self) -> float:
        """Records per second the fleet made (at its schedule unless the generator lagged)."""
        return float(self.report.to_dict()["offered_records_per_s"] or 0.0)

    @property
    def little_bound(self) -> float:
        """Requests/s the generators' uploads in flight allow at the measured mean ack
        latency (Little's law): when the achieved rate is near it, the concurrency capped."""
        lat = self.report.ack_latencies_s
        return self.in_flight * len(lat) / sum(lat) if lat else 0.0

    @property
    def envelope_rate(self) -> float:
        """Envelopes the collector acknowledged per second (200 answers)."""
        r = self.report
        return r.requests["200"] / (r.elapsed_s + r.drain_s)

    @property
    def rate(self) -> float:
        r = self.report
        return r.records_accepted / (r.elapsed_s + r.drain_s)

    @property
    def holds(self) -> bool:
        """The fleet is carried at its schedule: everything made was acknowledged (a failed
        request is retried, as by agents), rounds started on time and records arrived within
        an interval of being measured."""
        r, d = self.report, self.report.to_dict()
        return (
            r.records_accepted == r.records_made
            and (d["round_lag_s"]["p99"] or 0) < 5
            and (d["delivery_s"]["p99"] or 0) < r.interval_s
        )


def start_collector(
    tmp: Path, influx_url: str, database: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "sink": {"kind": "v1", "url": influx_url, "database": database, "timeout_s": 30},
        "data_dir": str(tmp / "collector"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
        "status": {"sweeper": False},
    }
    path = tmp / f"collector-{database}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [str(BIN / "sinyal-collector"), "serve", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / f"collector-{database}.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("collector did not start")


GROUPS = (  # leaf frame's file -> what it is, for the self-time summary
    ("collector/", "collector code (collector/*.py)"),
    ("agent/", "record contract (agent/*.py)"),
    ("httpx/", "httpx + httpcore (the sink's writes to InfluxDB)"),
    ("httpcore/", "httpx + httpcore (the sink's writes to InfluxDB)"),
    ("h11/", "httpx + httpcore (the sink's writes to InfluxDB)"),
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("httptools", "uvicorn (HTTP server)"),
    ("starlette/", "FastAPI + Starlette"),
    ("fastapi/", "FastAPI + Starlette"),
    ("pydantic", "FastAPI + Starlette"),
    ("anyio/", "anyio (threadpool hand-off)"),
    ("asyncio/", "asyncio event loop"),
    ("prometheus_client/", "prometheus metrics"),
    ("gzip.py", "gzip"),
    ("zlib", "gzip"),
    ("json/", "json"),
    ("threading.py", "threads, locks, queues"),
    ("queue.py", "threads, locks, queues"),
    ("socket.py", "sockets"),
    ("ssl.py", "sockets"),
    ("sqlite3", "registry (sqlite3)"),
)


def spy_summary(raw: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw output (--gil: samples while holding the GIL, i.e. Python CPU):
    (self time by component of the innermost frame, inclusive time of collector functions),
    each as % of the samples."""
    by_group: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not n_s.isdigit():
            continue
        n = int(n_s)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        group = next((g for key, g in GROUPS if key in leaf), "other (stdlib, C calls)")
        by_group[group] += n
        seen = set()
        for frame in frames:
            if "collector/" in frame and "collector/cli.py" not in frame:
                name = frame.split(" (", 1)[0]
                where = frame.split("collector/", 1)[1].split(":", 1)[0]
                key = f"{name} (collector/{where})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += n
    if not total:
        return [], []
    return (
        [(k, 100 * v / total) for k, v in by_group.most_common()],
        [(k, 100 * v / total) for k, v in inclusive.most_common(14)],
    )


def expect_204(status: int, text: bytes) -> None:
    if status != 204:
        raise RuntimeError(f"InfluxDB /write: HTTP {status}: {text[:300]!r}")


def direct_bodies(tokens: list[StationToken], batches: int) -> list[bytes]:
    """`batches` requests of one station's round each (3 icmp + heartbeat), as line protocol
    the collector's encoder writes (with the registry's region tags)."""
    cfg = SimConfig("http://unused", tokens, interval_s=60.0)
    t0 = time.monotonic_ns()
    stations = [SimStation(i, t, "good4g", cfg, t0) for i, t in enumerate(tokens[:batches])]
    bodies = []
    while len(bodies) < batches:
        for st in stations:
            records = st.make_round(time.time(), 60.0)
            lines = "\n".join(record_to_point(r, REGION) for r in records)
            bodies.append(lines.encode())
            if len(bodies) >= batches:
                break
    return bodies


def run_size(
    size: int,
    gens: int,
    tokens: list[StationToken],
    tmp: Path,
    db: Any,
    args: argparse.Namespace,
) -> Run:
    database = f"load_{size}"
    db.create_database(database)
    proc, url = start_collector(tmp, db.url, database)
    spy = None
    raw = tmp / f"spy-{size}.txt"
    try:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        parts = [tokens[i:size:gens] for i in range(gens)]
        cfgs = [
            SimConfig(
                collector=url,
                stations=part,
                interval_s=args.interval_s,
                targets=3,
                duration_s=args.seconds,
                concurrency=args.concurrency,
                drain_s=args.drain_s,
                timeout_s=60,
            )
            for part in parts
        ]
        children = [ctx.Process(target=generator, args=(c, queue)) for c in cfgs]
        for c in children:
            c.start()
        time.sleep(1.0 + size / 100_000)  # the children set their stations up first
        pids = {"collector": proc.pid, "InfluxDB": db.process.pid}
        pids.update({f"generator {i + 1}": c.pid for i, c in enumerate(children)})
        before = {k: proc_sample(p)[0] for k, p in pids.items()}
        watch = RssWatch(proc.pid)
        if args.py_spy and size == max(args.sizes):
            spy = subprocess.Popen(
                [str(BIN / "py-spy"), "record", "-p", str(proc.pid), "-o", str(raw), "-f",
                 "raw", "-r", "50", "-d", str(int(args.seconds)), "--gil", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        t0 = time.monotonic()
        after: dict[str, float] = {}
        reports = []
        for _ in children:
            reports.append(queue.get(timeout=args.seconds + args.drain_s + 600))
        seconds = time.monotonic() - t0
        for k, p in pids.items():
            try:
                after[k] = proc_sample(p)[0]
            except OSError:  # a generator that has already exited
                after[k] = before[k]
        rss = watch.done()
        for c in children:
            c.join(30)
        # a generator's CPU is measured until its report is handed back (it exits then)
        cpu = {k: 100 * (after[k] - before[k]) / seconds for k in pids}
        if spy is not None:
            spy.wait(args.seconds + 60)
        report = reports[0]
        for r in reports[1:]:
            report.merge(r)
        stored = sum(
            int(rows[0]["count"]) if rows else 0
            for rows in (
                db.query(f'SELECT count("id") FROM "{kind}"', database)
                for kind in ("icmp", "agent")
            )
        )
        result = Run(size, gens, report, seconds, cpu, rss, stored)
        result.in_flight = gens * args.concurrency
        if spy is not None and raw.exists():
            result.spy = spy_summary(raw)
    finally:
        proc.terminate()
        proc.wait(15)
    # the direct baseline, same database server, a database of its own
    direct_db = f"direct_{size}"
    db.create_database(direct_db)
    batches = int(args.direct_seconds * 3000)
    bodies = direct_bodies(tokens[:size], batches)
    before = proc_sample(db.process.pid)[0]
    own0 = time.process_time()
    t_write = f"{db.url}/write?db={direct_db}&precision=ns"
    requests, secs, lat = asyncio.run(
        post_http(
            t_write, [(b, {}) for b in bodies], args.direct_seconds, args.concurrency, expect_204
        )
    )
    points = 4 * requests
    result.direct_cpu = {
        "InfluxDB": 100 * (proc_sample(db.process.pid)[0] - before) / secs,
        "load generator": 100 * (time.process_time() - own0) / secs,
    }
    result.direct_rate = points / secs
    result.direct_lat = lat
    return result


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} %" for k, v in cpu.items())


def write_results(runs: list[Run], args: argparse.Namespace, setup_s: float) -> str:
    rows, direct_rows, detail = [], [], []
    for r in runs:
        d = r.report.to_dict()
        ack = d["ack_latency_ms"]
        gen_cpu = sum(v for k, v in r.cpu.items() if k.startswith("generator"))
        rows.append(
            f"| {r.size:,} | {r.offered:,.0f} | {r.rate:,.0f} "
            f"| {r.envelope_rate:,.0f} / {r.little_bound:,.0f} | {ack['p50']:.1f} ms "
            f"| {ack['p99']:.1f} ms | {d['delivery_s']['p99']:.1f} s "
            f"| {d['round_lag_s']['p99']:.2f} s | {r.cpu['collector']:.0f} % | {r.rss_mb:.0f} MB "
            f"| {r.cpu['InfluxDB']:.0f} % "
            f"| {gen_cpu:.0f} % ({r.generators}) "
            f"| {'yes' if r.holds else '**no**'} |"
        )
        direct_rows.append(
            f"| {r.size:,} | {r.direct_rate:,.0f} | {pct(r.direct_lat, 50):.1f} ms "
            f"| {pct(r.direct_lat, 99):.1f} ms | {fmt_cpu(r.direct_cpu)} "
            f"| {f'{r.rate / r.direct_rate:.2f}' if not r.holds else 'paced'} |"
        )
        held = ", ".join(f"{k} {v}" for k, v in d["records"]["held"].items()) or "none"
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r.report.requests.items()))
        detail.append(
            f"- {r.size:,} stations: {d['rounds']:,} rounds, records made {d['records']['made']:,},"
            f" acknowledged {d['records']['accepted']:,}, stored in InfluxDB {r.stored:,},"
            f" still pending after the {args.drain_s:g} s drain {held}; requests {statuses};"
            f" {d['elapsed_s']:.0f} s of rounds + {d['drain_s']:.1f} s drain;"
            f" CPU {fmt_cpu(r.cpu)}"
        )
    held_sizes = [r for r in runs if r.holds]
    best = max((r.rate for r in runs), default=0.0)
    # Each station sends one envelope per interval: the envelope rate is what limits.
    best_env = max((r.envelope_rate for r in runs), default=0.0)
    capacity = best_env * args.interval_s
    spy_rows = ""
    for r in runs:
        groups, functions = r.spy
        if groups:
            spy_rows = (
                f"\npy-spy of the collector during the {r.size:,}-station run (50 Hz, `--gil`:"
                " samples while Python code runs, so idle time is not counted). Where the"
                " collector's CPU goes, by the innermost frame:\n\n| component | share |\n"
                "|---|---|\n"
                + "\n".join(f"| {name} | {share:.0f} % |" for name, share in groups)
                + "\n\nCollector functions, inclusive (on the stack):\n\n| function | share |\n"
                "|---|---|\n"
                + "\n".join(f"| {name} | {share:.0f} % |" for name, share in functions)
                + "\n"
            )
    header = (
        "| stations | offered rec/s | acknowledged rec/s | requests/s / in-flight bound "
        "| ack p50 | ack p99 | delivery p99 "
        "| round lag p99 | collector CPU | collector RSS (peak) | InfluxDB CPU "
        "| generator CPU (processes) | holds |\n|" + "---|" * 13
    )
    report = f"""# Load: simulated fleets into one collector

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, a machine shared with other
work. InfluxDB 1.6.7 (Debian `influxd`, loopback, `tests.harness.dbs.influxd` config) and one
`sinyal-collector serve` process (uvicorn, sink v1, status engine on, sweeper off) on the same
2 cores as the load generator. Command:

    .venv/bin/python benchmarks/load.py {" ".join(sys.argv[1:])}

Load generator: `benchmarks.simulate.run` (the `python -m benchmarks.simulate` fleet simulator) in
child processes (the count is in the table), {args.concurrency} uploads in flight per process.
Every station has its own token (issued by `sinyal-collector agents add --all-stations --out`)
and uploads one gzip envelope per round: 3 icmp records + the heartbeat (the real agent's
envelope code), every **{args.interval_s:g} s (the real interval, not compressed)**, rounds
spread over the interval by the real scheduler's offsets; profile good4g. Each fleet size
runs **{args.seconds:g} s of rounds** (so {args.seconds / args.interval_s:g} rounds a station),
then at most {args.drain_s:g} s to upload what is still pending. Set-up (registry of
{max(args.sizes):,} stations, bulk tokens) took {setup_s:.0f} s.

- offered: records/s the fleet makes at its schedule (4 records per station a minute);
  acknowledged: records the collector acknowledged per second over rounds + drain.
- ack p50/p99: per request (one station's envelope), send to the collector's 200.
- delivery p99: measured → acknowledged, per record; round lag p99: how late the generator
  started rounds (above a few seconds the generator itself is behind).
- requests/s / in-flight bound: envelopes the collector acknowledged per second, and the
  generators' uploads in flight ({args.concurrency} per process) ÷ the mean ack latency
  (Little's law). When the two are equal every upload slot was busy all the time, waiting
  for the collector: the queue is in front of the collector, and more uploads in flight
  only lengthen the wait (see the two runs below).
- holds: every record acknowledged (a failed request is retried with the records kept, as by
  agents), rounds on time and delivered within one interval.

{header}
{chr(10).join(rows)}

CPU is in % of one core (the machine has 2 cores: 200 % in all), over the run.

Direct baseline, in the same run after each fleet: the same records (simulated rounds, encoded
by the collector's line-protocol encoder with the registry's region tags), one station's
round (4 lines) per request, POSTed straight to InfluxDB's `/write`, {args.concurrency}
requests in flight, as fast as it goes for {args.direct_seconds:g} s:

| stations (series) | points/s | p50 | p99 | CPU | collector ÷ direct |
|---|---|---|---|---|---|
{chr(10).join(direct_rows)}

{chr(10).join(detail)}

**Stations held at one report per minute:** {", ".join(f"{r.size:,}" for r in held_sizes) or "none"}
of the sizes tried. The most the collector answered in this run was {best_env:,.0f}
envelopes/s (and at most {best:,.0f} records/s acknowledged; envelopes grow with a backlog):
{capacity:,.0f} stations at one envelope every {args.interval_s:g} s on this machine
(collector, InfluxDB and the load generator sharing 2 cores).
{spy_rows}
Agent footprint at its default schedule over 10 minutes (CPU, RSS, bytes on the wire) is in
`benchmarks/results/agent-footprint.md`; it was not re-run here.

Benchmarks are not timed tests: the machine is shared and noisy; compare figures from one run.
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.md").write_text(report)
    (RESULTS / "load.json").write_text(
        json.dumps(
            [
                {
                    "stations": r.size,
                    "generators": r.generators,
                    "report": r.report.to_dict(),
                    "wall_s": r.seconds,
                    "cpu_pct": r.cpu,
                    "collector_rss_mb": r.rss_mb,
                    "stored": r.stored,
                    "holds": r.holds,
                    "direct_points_per_s": r.direct_rate,
                    "direct_p50_ms": pct(r.direct_lat, 50),
                    "direct_p99_ms": pct(r.direct_lat, 99),
                    "direct_cpu_pct": r.direct_cpu,
                    "collector_profile": {"self": r.spy[0], "inclusive": r.spy[1]},
                }
                for r in runs
            ],
            indent=2,
        )
        + "\n"
    )
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--generators", default="1,1,2", help="generator processes per size")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--interval-s", type=float, default=60)
    ap.add_argument("--drain-s", type=float, default=20)
    ap.add_argument("--direct-seconds", type=float, default=15)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--py-spy", action="store_true", help="profile the collector (largest size)")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    gens = [int(g) for g in args.generators.split(",")]
    if len(gens) != len(args.sizes):
        raise SystemExit("--generators: one count per size")
    t_setup = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_s, influxd("/usr/bin/influxd") as db:
        tmp = Path(tmp_s)
        (tmp / "collector").mkdir()
        stations_csv(tmp / "stations.csv", max(args.sizes))
        setup_cfg = tmp / "setup.yaml"
        setup_cfg.write_text(
            yaml.safe_dump(
                {
                    "sink": {"kind": "v1", "url": db.url, "database": "unused"},
                    "data_dir": str(tmp / "collector"),
                    "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
                }
            )
        )
        cli = [str(BIN / "sinyal-collector"), "-c", str(setup_cfg)]
        subprocess.run([*cli, "stations", "import", str(tmp / "stations.csv")], check=True)
        tokens_path = tmp / "tokens.csv"
        subprocess.run(
            [*cli, "agents", "add", "--all-stations", "--out", str(tokens_path)], check=True
        )
        tokens = simulate.load_tokens(tokens_path)
        setup_s = time.monotonic() - t_setup
        print(f"set up {len(tokens):,} stations and tokens in {setup_s:.0f} s", flush=True)
        runs = []
        for size, g in zip(args.sizes, gens, strict=True):
            print(f"fleet of {size:,} ({g} generator process(es))…", flush=True)
            run = run_size(size, g, tokens[:size], tmp, db, args)
            print(run.report.summary(), flush=True)
            runs.append(run)
    report = write_results(runs, args, setup_s)
    print(report)
    for r in runs:
        # Requests still in flight when the drain ended were written but not acknowledged
        # to the simulator: stored may exceed acknowledged, never made.
        if not r.report.records_accepted <= r.stored <= r.report.records_made:
            raise SystemExit(
                f"{r.size}: made {r.report.records_made}, acknowledged"
                f" {r.report.records_accepted}, stored {r.stored}"
            )


if __name__ == "__main__":
    main()
