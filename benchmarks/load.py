"""Load: a fleet reporting every minute through nginx into collector processes and InfluxDB.

Everything on this machine: Debian's InfluxDB 1.6.7 (loopback, `tests.harness.dbs.influxd`),
`sinyal-collector serve` processes (one port each), Debian's nginx-light routing every
station to one of them (`hash $station consistent`, benchmarks.wrkload.nginx_config) and the
load generator, wrk replaying pre-built envelopes (benchmarks/wrkload.py). The registry holds
--stations stations, each with its own token, made with the real CLI's bulk path
(`stations import`, `agents add --all-stations --out`), timed.

1. Fleet: --stations stations at one envelope (3 icmp records + the heartbeat) every 60 s for
   --minutes, through nginx to --collectors processes, after a warm-up (unless --no-warmup:
   every station sends one envelope first, as fast as the stack takes it, checked and
   reported apart, in none of the window's figures): every record acknowledged (the answers'
   `accepted` ids counted by the Lua script) and stored (counted in InfluxDB), ack p99,
   how late wrk sent (its pacing), CPU of every process from /proc, the load average.
2. Saturation: the same stack with 1 and then 2 collector processes, wrk sending as fast as
   --sat-connections connections allow for --sat-seconds: envelopes/s answered, the ratio,
   and the CPU per envelope of the collectors.
3. 100-record envelopes (99 icmp + heartbeat) at saturation through nginx to one collector:
   the collector's CPU per point.

    .venv/bin/python benchmarks/load.py [--stations 100000] [--minutes 5] [--collectors 2]
Writes benchmarks/results/load.md and load.json. Needs wrk, nginx and influxd (Debian).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

# Run as a script (python benchmarks/X.py): the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import simulate, wrkload
from benchmarks.common import (
    RESULTS,
    children_of,
    machine,
    machine_busy,
    proc_sample,
    stations_csv,
    wait_healthy,
)
from benchmarks.simulate import StationToken
from tests.harness.dbs import deploy_influx_tuning, free_port, influxd

ROOT = Path(__file__).resolve().parent.parent
PY = [sys.executable, "-m", "collector.cli"]


def collector_config(tmp: Path, influx_url: str, database: str, port: int) -> Path:
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "sink": {"kind": "v1", "url": influx_url, "database": database, "timeout_s": 30},
        "data_dir": str(tmp / "collector"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
        "status": {"sweeper": False},
    }
    path = tmp / f"collector-{database}-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def collectors(
    tmp: Path, influx_url: str, database: str, n: int
) -> Iterator[list[tuple[int, str]]]:
    """`n` collector processes, one port each: [(pid, url)]."""
    procs: list[subprocess.Popen[bytes]] = []
    out = []
    try:
        for _ in range(n):
            port = free_port()
            path = collector_config(tmp, influx_url, database, port)
            proc = subprocess.Popen(
                [*PY, "serve", "-c", str(path)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=(tmp / f"collector-{database}-{port}.log").open("wb"),
            )
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc)
            out.append((proc.pid, url))
        yield out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)


@dataclass
class Measured:
    name: str
    collectors: int
    stations: int
    envelopes: int  # planned
    records: int  # planned
    records_per_envelope: float
    offered_per_s: float  # envelopes/s planned
    build_s: float
    wrk: dict[str, Any]
    seconds: float
    finished: bool
    stored: int
    cpu_s: dict[str, float]  # CPU seconds over the window, by process group
    machine_cpu_s: float  # the whole machine's busy CPU seconds over the window
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)
    influx_disk_mb: float = 0.0  # the run's database: TSM + WAL directories after the run
    influx_rss_mb: float = 0.0  # InfluxDB's resident memory after the run (all databases)
    series: int = 0  # series in the run's database
    # the warm-up before the measured window (None: the run started from an empty database):
    # every station's one envelope, sent as fast as the stack took it; see warm_up()
    warmup: dict[str, Any] | None = None
    # records the collectors rejected in the measured window, by reason (their /metrics)
    rejected: dict[str, int] = field(default_factory=dict)
    # InfluxDB's settings: "deploy" (deploy/influxdb's tuning), "stock" (influxd's defaults)
    influx: str = "stock"
    # those settings in words (runs before this field existed: the tuning of their time)
    influx_settings: str = ""
    # what InfluxDB's engine did in the measured window (its /debug/vars, after - before):
    # cache snapshots, TSM compactions and garbage collections, counts and seconds
    influx_window: dict[str, float] = field(default_factory=dict)

    def settings(self) -> str:
        if self.influx_settings:
            return self.influx_settings
        return OLD_DEPLOY if self.influx == "deploy" else STOCK

    @property
    def rate(self) -> float:
        return float(self.wrk["ok"]) / self.seconds

    def pct(self, group: str) -> float:
        return 100 * self.cpu_s.get(group, 0.0) / self.seconds

    @property
    def collector_cpu_per_envelope_ms(self) -> float:
        return 1000 * self.cpu_s["collectors"] / max(1, self.wrk["ok"])

    @property
    def all_acknowledged(self) -> bool:
        w = self.wrk
        return (
            self.finished
            and w["ok"] == self.envelopes
            and w["accepted"] == self.records
            and w["other"] == 0
            and w["rejected_envelopes"] == 0
        )

    @property
    def warmup_ok(self) -> bool:
        """No warm-up, or every warm-up envelope answered 200 and every record acknowledged
        and stored."""
        w = self.warmup
        return w is None or (
            w["finished"]
            and w["ok"] == w["envelopes"]
            and w["accepted"] == w["records"] == w["stored"]
            and w["other"] == 0
            and w["rejected_envelopes"] == 0
        )

    @property
    def held(self) -> bool:
        """Every record acknowledged and stored, ack p99 under 2 s, every envelope sent
        and answered within one interval of its planned (measurement) time (and the warm-up
        before it, if any, complete)."""
        delivery_bound_s = (
            self.wrk["late_ms"]["max"] + self.wrk["latency_us"]["max"] / 1000
        ) / 1000
        return (
            self.warmup_ok
            and self.all_acknowledged
            and self.stored == self.records
            and self.wrk["latency_us"]["p99"] < 2_000_000
            and delivery_bound_s < 60
        )


STOCK = "influxd's defaults (`inmem` index, 25 MB cache snapshots, 1 GB cache, GOGC=100)"
# deploy/influxdb's tuning before runs recorded their settings (load.json entries without it)
OLD_DEPLOY = "`tsi1`, 256 MB cache snapshots, 2 GB cache, GOGC=200"


def settings_text(options: dict[str, Any], env: dict[str, str]) -> str:
    """deploy/influxdb's tuning (deploy_influx_tuning()) in words, for the report."""
    if not options and not env:
        return STOCK
    parts = []
    if "index-version" in options:
        parts.append(f"`{options['index-version']}`")
    for key, what in (("cache-snapshot-memory-size", "cache snapshots"),
                      ("cache-max-memory-size", "cache")):  # fmt: skip
        if key in options:
            parts.append(f"{int(options[key]) / 2**20:,.0f} MB {what}")
    parts += [f"{k}={v}" for k, v in sorted(env.items())]
    return ", ".join(parts)


ENGINE_COUNTERS = {
    # /debug/vars name.field -> key in Measured.influx_window
    "tsm1_engine.cacheCompactions": "snapshots",
    "tsm1_engine.cacheCompactionDuration": "snapshot_s",
    **{
        f"tsm1_engine.tsm{level}Compactions": "compactions"
        for level in ("Level1", "Level2", "Level3", "Optimize", "Full")
    },
    **{
        f"tsm1_engine.tsm{level}CompactionDuration": "compaction_s"
        for level in ("Level1", "Level2", "Level3", "Optimize", "Full")
    },
}


def debug_vars(url: str, timeout_s: float = 30) -> dict[str, Any]:
    """InfluxDB's /debug/vars: its statistics and Go's memstats."""
    v: dict[str, Any] = httpx.get(f"{url}/debug/vars", timeout=timeout_s).json()
    return v


def influx_engine(v: dict[str, Any]) -> dict[str, float]:
    """The engine counters of a debug_vars() answer (summed over shards): cache snapshots
    and TSM compactions (counts and seconds) and Go's garbage collections (count, pause
    seconds)."""
    out = dict.fromkeys([*ENGINE_COUNTERS.values(), "gc", "gc_pause_s"], 0.0)
    for entry in v.values():
        if not isinstance(entry, dict) or entry.get("name") != "tsm1_engine":
            continue
        for name, value in entry.get("values", {}).items():
            key = ENGINE_COUNTERS.get(f"tsm1_engine.{name}")
            if key is not None:
                out[key] += value / 1e9 if key.endswith("_s") else value
    out["gc"] = float(v["memstats"]["NumGC"])
    out["gc_pause_s"] = v["memstats"]["PauseTotalNs"] / 1e9
    return out


SLOW_WAIT_S = "0.5"  # a bucket bound of sinyal_database_write_seconds


def slow_waits(url: str) -> tuple[float, float]:
    """A collector's database waits so far (its sinyal_database_write_seconds histogram):
    (all, longer than SLOW_WAIT_S)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    count = re.search(r"^sinyal_database_write_seconds_count ([0-9.e+]+)$", text, re.M)
    le = re.search(
        rf'^sinyal_database_write_seconds_bucket\{{le="{SLOW_WAIT_S}"\}} ([0-9.e+]+)$', text, re.M
    )
    if not count or not le:
        raise RuntimeError(f"{url}/metrics has no sinyal_database_write_seconds histogram")
    return float(count.group(1)), float(count.group(1)) - float(le.group(1))


class SnapshotWatch:
    """Once a second while the window runs: is InfluxDB writing a cache snapshot (its
    tsm1_cache diskBytes, the snapshot being written, above 0), and how many of the
    collectors' database waits took longer than SLOW_WAIT_S. The time between two samples
    counts as "during a snapshot" when either saw one. A sample that failed (a process too
    busy to answer within 5 s) is counted, and the time around it is left out."""

    def __init__(self, influx_url: str, collector_urls: list[str]) -> None:
        self.influx_url = influx_url
        self.urls = collector_urls
        self.totals = {True: [0.0, 0.0, 0.0], False: [0.0, 0.0, 0.0]}  # seconds, waits, slow
        self.missed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _snapshotting(self) -> bool:
        v = debug_vars(self.influx_url, timeout_s=5)
        return any(
            e.get("values", {}).get("diskBytes", 0) > 0
            for e in v.values()
            if isinstance(e, dict) and e.get("name") == "tsm1_cache"
        )

    def _sample(self) -> tuple[bool, list[tuple[float, float]]]:
        return self._snapshotting(), [slow_waits(u) for u in self.urls]

    def _run(self) -> None:
        prev = None
        prev_at = 0.0
        while not self._stop.wait(1.0):
            try:
                cur = self._sample()
            except (httpx.HTTPError, RuntimeError, ValueError):
                self.missed += 1
                prev = None
                continue
            at = time.monotonic()  # a sample can take seconds when the machine is busy
            if prev is not None:
                t = self.totals[cur[0] or prev[0]]
                t[0] += at - prev_at
                t[1] += sum(c[0] - p[0] for c, p in zip(cur[1], prev[1], strict=True))
                t[2] += sum(c[1] - p[1] for c, p in zip(cur[1], prev[1], strict=True))
            prev, prev_at = cur, at

    def __enter__(self) -> SnapshotWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {"missed": float(self.missed)}
        for during, (secs, waits, slow) in self.totals.items():
            key = "snapshot" if during else "other"
            out[f"{key}_s_sampled"], out[f"{key}_waits"], out[f"{key}_slow"] = secs, waits, slow
        return out


def engine_line(m: Measured) -> str:
    """The details' line on InfluxDB's engine (for runs with an influx_window)."""
    w = m.influx_window
    line = (
        f"- InfluxDB's engine in the window: {w['snapshots']:.0f} cache snapshots to TSM"
        f" ({w['snapshot_s']:.0f} s of snapshotting in all), {w['compactions']:.0f} TSM"
        f" compactions ({w['compaction_s']:.0f} s), {w['gc']:.0f} garbage collections"
        f" ({1000 * w['gc_pause_s']:.0f} ms of pauses); its settings: {m.settings()}."
    )
    if "snapshot_s_sampled" not in w:
        return line

    def share(key: str) -> str:
        return f"{100 * w[key + '_slow'] / max(1.0, w[key + '_waits']):.1f} %"

    return line + (
        f" Sampled each second: in the {w['snapshot_s_sampled']:.0f} s while a snapshot was"
        f" being written, {share('snapshot')} of the collectors' database waits took over"
        f" {SLOW_WAIT_S} s; in the other {w['other_s_sampled']:.0f} s, {share('other')}"
        f" ({w['missed']:.0f} samples failed: a process did not answer within 5 s; the"
        " time around them is in neither)."
    )


def influx_query(db: Any, q: str, database: str) -> list[list[Any]]:
    """The rows of every series a query returns; a long timeout (the machine is shared and
    a count reads every point of the run)."""
    r = httpx.post(f"{db.url}/query", data={"q": q, "db": database}, timeout=600)
    r.raise_for_status()
    return [v for s in r.json()["results"][0].get("series", []) for v in s["values"]]


def stored_records(db: Any, database: str, where: str = "") -> int:
    """Records (icmp and agent points) stored in `database`, those matching `where` (an
    InfluxQL condition) if given."""
    cond = f" WHERE {where}" if where else ""
    total = 0
    for kind in ("icmp", "agent"):
        rows = influx_query(db, f'SELECT count("id") FROM "{kind}"{cond}', database)
        total += int(rows[0][1]) if rows else 0
    return total


WARMUP_RATE = 1e6  # envelopes/s planned: every request leaves as soon as a connection is free


def warm_up(
    name: str,
    tmp: Path,
    tokens: list[StationToken],
    url: str,
    connections: int,
    targets: int,
) -> tuple[dict[str, Any], float]:
    """Every station of `tokens` sends one envelope (`targets` icmp records and the
    heartbeat, its own token, unique ids, measured when the warm-up starts) through `url`,
    as fast as the stack answers on `connections` connections, so that the measured window
    sees the steady state (the stations' series exist in InfluxDB, each collector knows its
    stations' status) rather than every station's first upload. (what wrk saw, the newest
    measurement time of a warm-up record in epoch seconds)."""
    out = tmp / f"warmup-{name}"
    plan = wrkload.Plan(tokens, rate=WARMUP_RATE, rounds=1, start=time.time(), targets=targets)
    lead_s = 2 * wrkload.estimate_build_s(plan, out) + 5
    plan = dataclasses.replace(plan, start=time.time() + lead_s)
    built = wrkload.build(plan, out)
    time.sleep(max(0.0, plan.start - time.time()))
    # a deadline no stack that holds a fleet at all comes near (50 envelopes/s)
    result = wrkload.run(url, out, plan, connections, 60 + len(tokens) / 50)
    summary = {
        **result.summary,
        "envelopes": built.envelopes,
        "records": built.records,
        "seconds": result.seconds,
        "finished": result.finished,
        "connections": connections,
        "build_s": built.seconds,
        "rate": result.rate,
    }
    print(f"{name}: warm-up {json.dumps(summary)}", flush=True)
    return summary, plan.start + (plan.envelopes - 1) / plan.rate


REJECTED = re.compile(r'^sinyal_records_rejected_total\{reason="([^"]+)"\} ([0-9.e+]+)$', re.M)


def rejected_by_reason(urls: list[str]) -> dict[str, int]:
    """Records rejected so far by the collectors at `urls`, by reason (their /metrics)."""
    out: dict[str, int] = {}
    for url in urls:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        for reason, n in REJECTED.findall(text):
            out[reason] = out.get(reason, 0) + int(float(n))
    return out


def measure(
    name: str,
    tmp: Path,
    db: Any,
    tokens: list[StationToken],
    n_collectors: int,
    plan_args: dict[str, Any],
    connections: int,
    deadline_s: float | None,
    lead_s: float,
    before_stop: Callable[[list[tuple[int, str]]], None] | None = None,
    warmup_connections: int = 0,
) -> Measured:
    """One run: fresh database, `n_collectors` behind nginx, wrk replaying the plan;
    `before_stop` sees the collectors [(pid, url)] after the run, while they still run.
    With `warmup_connections`, every station first sends one envelope (warm_up(), on that
    many connections), reported apart: the measured window's figures (answers, stored
    records, CPU) exclude it."""
    database = name.replace("-", "_")
    db.create_database(database)
    with (
        collectors(tmp, db.url, database, n_collectors) as procs,
        wrkload.nginx(tmp / f"nginx-{name}", [u for _, u in procs]) as (nginx_pid, nginx_url),
    ):
        warm: dict[str, Any] | None = None
        warm_newest = 0.0
        if warmup_connections:
            warm, warm_newest = warm_up(
                name, tmp, tokens, nginx_url, warmup_connections, plan_args.get("targets", 3)
            )
        # Envelope times are the planned send times: the start must leave time to build
        # them all (the machine is shared: how fast it builds is measured now).
        plan = wrkload.Plan(tokens, start=time.time(), **plan_args)
        estimate = wrkload.estimate_build_s(plan, tmp / f"requests-{name}")
        lead_s = max(lead_s, 2 * estimate + 15)
        print(f"{name}: building for about {estimate:.0f} s, start in {lead_s:.0f} s", flush=True)
        t_build = time.monotonic()
        plan = wrkload.Plan(tokens, start=time.time() + lead_s, host="127.0.0.1", **plan_args)
        built = wrkload.build(plan, tmp / f"requests-{name}")
        build_s = time.monotonic() - t_build
        late_start = time.time() - plan.start
        notes = []
        if late_start > -1:
            notes.append(f"the build ended {late_start:.0f} s after the planned start")
            print(f"{name}: {notes[-1]}", flush=True)
        time.sleep(max(0.0, plan.start - time.time() - 0.5))
        watch = {f"collector {i + 1}": pid for i, (pid, _) in enumerate(procs)}
        watch["InfluxDB"] = db.process.pid
        for i, w in enumerate(children_of(nginx_pid)):
            watch[f"nginx worker {i + 1}"] = w
        rejected0 = rejected_by_reason([u for _, u in procs])
        if warm is not None:
            warm["gap_s"] = plan.start - warm_newest  # its records' age at the window's start
            warm["rejected"] = rejected0
        load_before = os.getloadavg()
        engine0 = influx_engine(debug_vars(db.url))
        busy0 = machine_busy()
        with SnapshotWatch(db.url, [u for _, u in procs]) as snapshots:
            result = wrkload.run(
                nginx_url,
                tmp / f"requests-{name}",
                plan,
                connections,
                deadline_s if deadline_s is not None else plan.span_s + 60,
                watch,
            )
        busy = machine_busy() - busy0
        engine = {k: v - engine0[k] for k, v in influx_engine(debug_vars(db.url)).items()}
        engine.update(snapshots.result())
        load_after = os.getloadavg()
        print(f"{name}: {json.dumps(result.summary)} cpu {result.cpu}", flush=True)
        rejected = {
            k: v - rejected0.get(k, 0)
            for k, v in rejected_by_reason([u for _, u in procs]).items()
            if v > rejected0.get(k, 0)
        }
        if before_stop is not None:
            before_stop(procs)
    time.sleep(1)
    stored = stored_records(db, database)
    if warm is not None:
        # Point times are measurement times (plus seq mod 1000 ns): the warm-up's were all
        # measured more than a second before the window's first (checked), so one boundary
        # splits them exactly.
        boundary = plan.start - 1.0
        if warm_newest >= boundary:
            raise RuntimeError(f"{name}: the warm-up's records are not all before {boundary}")
        cond = f"time < {int(boundary * 1e9)}"
        warm["stored"] = stored_records(db, database, cond)
        stored -= warm["stored"]
    root = db.log_path.parent
    disk = sum(
        f.stat().st_size
        for d in (root / "data" / database, root / "wal" / database)
        if d.exists()
        for f in d.rglob("*")
        if f.is_file()
    )
    rows = influx_query(db, f'SHOW SERIES EXACT CARDINALITY ON "{database}"', database)
    series = sum(int(r[0]) for r in rows)  # one row per measurement
    groups: dict[str, float] = {"collectors": 0.0, "nginx": 0.0}
    for k, v in result.cpu.items():
        if k.startswith("collector"):
            groups["collectors"] += v
        elif k.startswith("nginx"):
            groups["nginx"] += v
        groups[k] = v
    return Measured(
        name=name,
        collectors=n_collectors,
        stations=len(tokens),
        envelopes=built.envelopes,
        records=built.records,
        records_per_envelope=built.records / built.envelopes,
        offered_per_s=plan.rate,
        build_s=build_s,
        wrk=result.summary,
        seconds=result.seconds,
        finished=result.finished,
        stored=stored,
        cpu_s=groups,
        machine_cpu_s=busy,
        load_before=load_before,
        load_after=load_after,
        notes=notes,
        influx_disk_mb=disk / 2**20,
        influx_rss_mb=proc_sample(db.process.pid)[1],
        series=series,
        warmup=warm,
        rejected=rejected,
        influx_window=engine,
    )


def setup_registry(tmp: Path, influx_url: str, n: int) -> tuple[list[StationToken], float]:
    (tmp / "collector").mkdir(exist_ok=True)
    stations_csv(tmp / "stations.csv", n)
    cfg = tmp / "setup.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "sink": {"kind": "v1", "url": influx_url, "database": "unused"},
                "data_dir": str(tmp / "collector"),
                "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
            }
        )
    )
    t0 = time.monotonic()
    cli = [*PY, "-c", str(cfg)]
    subprocess.run([*cli, "stations", "import", str(tmp / "stations.csv")], check=True, cwd=ROOT)
    subprocess.run(
        [*cli, "agents", "add", "--all-stations", "--out", str(tmp / "tokens.csv")],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return simulate.load_tokens(tmp / "tokens.csv"), time.monotonic() - t0


def cpu_line(m: Measured) -> str:
    keys = ["collectors", "nginx", "InfluxDB", "wrk"]
    parts = [f"{k} {m.pct(k):.0f} %" for k in keys]
    ours = sum(m.cpu_s.get(k, 0.0) for k in keys)
    parts.append(
        f"everything else on the machine {100 * (m.machine_cpu_s - ours) / m.seconds:.0f} %"
    )
    return ", ".join(parts)


def row(m: Measured) -> str:
    w = m.wrk
    lat = w["latency_us"]
    return (
        f"| {m.name} | {m.influx} | {m.collectors} | {m.stations:,} "
        f"| {m.offered_per_s:,.0f} | {m.rate:,.0f} "
        f"| {w['ok']:,} / {m.envelopes:,} | {w['accepted']:,} / {m.records:,} | {m.stored:,} "
        f"| {lat['p50'] / 1000:.1f} ms | {lat['p99'] / 1000:.1f} ms | {lat['max'] / 1000:.0f} ms "
        f"| {w['late_ms']['p99']:,} ms / {w['late_ms']['max'] / 1000:.1f} s "
        f"| {m.pct('collectors'):.0f} % | {m.pct('nginx'):.0f} % | {m.pct('InfluxDB'):.0f} % "
        f"| {m.pct('wrk'):.1f} % | {m.load_before[0]:.1f} → {m.load_after[0]:.1f} |"
    )


HEADER = (
    "| run | InfluxDB settings | collector processes | stations | offered env/s | answered env/s "
    "| envelopes 200 / planned | records acknowledged / planned | records stored "
    "| ack p50 | ack p99 | ack max | wrk late p99 / max | collectors CPU | nginx CPU "
    "| InfluxDB CPU | wrk CPU | load average (1 min) before → after |\n|" + "---|" * 18
)


def warmup_line(m: Measured) -> str:
    w = m.warmup
    if w is None:
        return (
            "- **No warm-up** (`--no-warmup`): the window started from an empty database and"
            " collectors that had never seen the stations, so it includes every station's"
            " first upload (InfluxDB creates its series, each collector reads its last status)."
        )
    per = w["records"] // max(1, w["envelopes"])
    return (
        f"- **Warmed up first**: every station sent one envelope ({per} records, its own"
        " token, unique ids) through the same nginx and"
        f" collector processes, as fast as the stack answered (wrk, {w['connections']}"
        f" connections, unpaced): {w['ok']:,} of {w['envelopes']:,} answered 200 (other"
        f" {w['other']}, wrk errors {sum(w['errors'].values())}, records rejected"
        f" {w.get('rejected') or 'none'}), {w['accepted']:,} of"
        f" {w['records']:,} records acknowledged and {w['stored']:,} stored, in"
        f" {w['seconds']:.0f} s ({w['rate']:,.0f} envelopes/s; ack p99"
        f" {w['latency_us']['p99'] / 1000:.0f} ms). Its records were measured"
        f" {w['gap_s']:.0f} s before the window's first (the window's envelopes were built"
        " after it). **Complete: " + ("yes" if m.warmup_ok else "NO, so not held") + "**."
        " None of it is in this run's figures: answers, stored records (counted by time,"
        " the window's only) and CPU cover the measured window alone."
    )


def fleet_section(m: Measured, minutes: int) -> list[str]:
    w = m.wrk
    delivery_bound = (w["late_ms"]["max"] + w["latency_us"]["max"] / 1000) / 1000
    offered_rec = m.offered_per_s * m.records_per_envelope
    gen_ratio = m.cpu_s["wrk"] / max(1e-9, m.cpu_s["collectors"])
    return [
        f"### {m.stations:,} stations, {minutes} minutes ({m.name})",
        "",
        warmup_line(m),
        f"- Offered {m.offered_per_s:,.0f} envelopes/s ({offered_rec:,.0f} records/s)"
        f" for {m.envelopes / m.offered_per_s:.0f} s through nginx to {m.collectors}"
        f" collector processes; answered {m.rate:,.0f}/s over the window of"
        f" {m.seconds:.0f} s.",
        f"- Envelopes answered 200: {w['ok']:,} of {m.envelopes:,}; other answers {w['other']};"
        f" wrk errors {w['errors']}; envelopes with a rejected record {w['rejected_envelopes']}"
        + (f" (records rejected, by reason: {m.rejected})." if m.rejected else "."),
        f"- Records acknowledged {w['accepted']:,} of {m.records:,}; stored in InfluxDB"
        f" {m.stored:,}.",
        f"- Ack latency p50 {w['latency_us']['p50'] / 1000:.1f} ms, p90"
        f" {w['latency_us']['p90'] / 1000:.1f} ms, p99 {w['latency_us']['p99'] / 1000:.1f} ms,"
        f" p99.9 {w['latency_us']['p999'] / 1000:.1f} ms,"
        f" max {w['latency_us']['max'] / 1000:.0f} ms.",
        f"- Delivery: every envelope was sent at most {w['late_ms']['max'] / 1000:.1f} s after"
        f" its records were measured and answered at most {w['latency_us']['max'] / 1e6:.1f} s"
        f" later: every record acknowledged within {delivery_bound:.1f} s of being measured"
        " (an upper bound: the worst send lag plus the worst latency).",
        f"- CPU: {cpu_line(m)}.",
        f"- InfluxDB after the run: {m.series:,} series in the run's database,"
        f" {m.influx_disk_mb:,.0f} MB on disk for it (TSM + WAL, minutes after the writes:"
        f" mostly WAL, {1e6 * m.influx_disk_mb / max(1, m.stored) * 1.048576:,.0f}"
        f" bytes a point, an upper bound), resident memory {m.influx_rss_mb:,.0f} MB"
        + f" ({m.settings()}).",
        *([engine_line(m)] if m.influx_window else []),
        f"- The generator: wrk used {m.cpu_s['wrk']:.1f} s of CPU, the collector processes"
        f" {m.cpu_s['collectors']:.1f} s: **{gen_ratio:.3f} of the collectors' CPU**"
        " (target: under 0.25).",
        f"- Build: {m.envelopes:,} envelopes in {m.build_s:.0f} s (two processes, before"
        " the run)" + (f"; {'; '.join(m.notes)}." if m.notes else "."),
        f"- **Held: {'yes' if m.held else 'no'}** (every record acknowledged and stored, ack"
        " p99 under 2 s, delivered within one interval).",
        "",
    ]


def write_results(
    runs: dict[str, Measured], args: argparse.Namespace, setup_s: float, ingest_note: str
) -> str:
    fleets = sorted(
        (m for k, m in runs.items() if k.startswith("fleet")), key=lambda m: -m.stations
    )
    held = [m.stations for m in fleets if m.held]
    one = runs.get("sat-1") or runs.get("sat-1-stock")
    two = runs.get("sat-2") or runs.get("sat-2-stock")
    batch = runs.get("batch-100") or runs.get("batch-100-stock")
    lines = [
        "# Load: a fleet through nginx into collector processes, driven by wrk",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} UTC on {machine()}, a machine shared with"
        " other engineers' work (the load average and the CPU of everything else are in the"
        " tables). Commands (the later ones add their runs to load.json with --append):",
        "",
        *(f"    .venv/bin/python benchmarks/load.py {c}" for c in args.command),
        "",
        "Stack, all on these 2 cores: InfluxDB 1.6.7 (Debian `influxd`, loopback,"
        ' `tests.harness.dbs.influxd` config; "InfluxDB settings" `deploy`: plus the tuning'
        " that deploy/influxdb ships at the time of the run (`index-version`, cache snapshot"
        " and cache sizes, Go's GC settings; docs/operations.md; each run's details name"
        " them), `stock`: influxd's defaults for those)"
        "; `sinyal-collector serve` processes, one port each"
        " (sink v1, status engine on, sweeper off, default limits: every station has its own"
        " token); Debian nginx-light in front with `deploy/nginx/collector.conf` as shipped"
        " (TLS, `hash $sinyal_station consistent` on the station of"
        " `/api/v1/stations/{id}/measurements`, keep-alive to the upstreams; listen address,"
        " certificate and servers replaced, 2 workers); the load generator: Debian wrk 4.1 with"
        " `benchmarks/wrk/replay.lua` (benchmarks/wrkload.py), over TLS.",
        "",
        f"Registry: {args.registry:,} stations and one token each, with the real CLI's bulk path"
        f" (`stations import` then `agents add --all-stations --out`): **{setup_s:.0f} s**.",
        "",
        "Envelopes: built before each run (the build time is in the details, not in any CPU"
        " figure) by the fleet simulator's stations and the contract's encoder, one per station"
        " a round: 3 icmp records and the heartbeat, gzip, the station's own token, unique"
        " record ids; each measured at its planned send time. wrk sends each at that time"
        " (replay.lua's `delay()`; see benchmarks/wrkload.py for why: Debian's wrk has no"
        " constant-rate mode), so when wrk keeps up every record is current when sent. `wrk"
        " late` is how late wrk sent (all connections were waiting for answers); `ack` is wrk's"
        " latency, from a request's send to its answer, per envelope. `envelopes 200` and"
        " `records acknowledged` are counted by the Lua script from the answers (`accepted`"
        " ids); `records stored` is `count(id)` in InfluxDB after the run, of the window's"
        " records only.",
        "",
        "Warm-up (fleet runs, unless `--no-warmup`): on voting day the fleet has reported since"
        " the morning, so before a fleet's measured window every station sends one envelope"
        " of the same kind through the same nginx and collector processes, as fast as the"
        " stack answers (wrk, unpaced, `--warmup-connections`), checked (every answer 200,"
        " every record acknowledged and stored) and reported on its own line in each fleet's"
        " details; the measured window then sees the steady state (the stations' series exist"
        " in InfluxDB, each collector knows its stations' status), as `benchmarks/ingest.py`"
        " does. The saturation and 100-record runs start from an empty database.",
        "",
        "CPU is in % of one core (200 % = the whole machine), over the run's window (wrk's start"
        " until every answer was in).",
        "",
        HEADER,
        *(row(m) for m in runs.values()),
        "",
        "## 1. Fleets at one envelope a minute",
        "",
        *(line for m in fleets for line in fleet_section(m, args.minutes)),
        (
            f"**Largest fleet held: {max(held):,} stations**, in"
            f" {held.count(max(held))} of {sum(m.stations == max(held) for m in fleets)} runs"
            f" of that size, of those tried ({', '.join(f'{m.stations:,}' for m in fleets)})."
            if held
            else "**No fleet tried was held.**"
        ),
        "",
    ]
    if one and two:
        ratio = two.rate / one.rate
        lines += [
            "## 2. One collector process vs two, at saturation",
            "",
            f"wrk with {args.sat_connections} connections through nginx, sending as fast as the"
            f" answers come for {args.sat_seconds:g} s (envelopes planned at"
            f" {one.offered_per_s:,.0f}/s, more than either stack answers; later envelopes go"
            " out late and are measured that long before they are sent, still well inside the"
            " collector's window).",
            "",
            "| collector processes | envelopes/s answered | collectors CPU | per process"
            " | nginx CPU | InfluxDB CPU | wrk CPU | everything else | collector CPU per"
            " envelope |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in (one, two):
            per = ", ".join(f"{m.pct(k):.0f} %" for k in m.cpu_s if k.startswith("collector "))
            ours = sum(m.cpu_s.get(k, 0.0) for k in ("collectors", "nginx", "InfluxDB", "wrk"))
            lines.append(
                f"| {m.collectors} | {m.rate:,.0f} | {m.pct('collectors'):.0f} % | {per} "
                f"| {m.pct('nginx'):.0f} % | {m.pct('InfluxDB'):.0f} % | {m.pct('wrk'):.1f} % "
                f"| {100 * (m.machine_cpu_s - ours) / m.seconds:.0f} % "
                f"| {m.collector_cpu_per_envelope_ms:.2f} ms |"
            )
        lines += [
            "",
            f"**Two ÷ one: {ratio:.2f}x** (goal 1.6x when the machine has idle CPU).",
            "",
        ]
    if batch:
        per_point_us = 1e6 * batch.cpu_s["collectors"] / max(1, batch.wrk["accepted"])
        lines += [
            "## 3. 100-record envelopes (99 icmp records + the heartbeat)",
            "",
            f"One collector process behind nginx, wrk at saturation ({args.sat_connections}"
            f" connections) for {args.sat_seconds:g} s: {batch.rate:,.0f} envelopes/s,"
            f" {batch.wrk['accepted'] / batch.seconds:,.0f} records/s acknowledged; collector"
            f" CPU {batch.pct('collectors'):.0f} %, InfluxDB {batch.pct('InfluxDB'):.0f} %:"
            f" **{per_point_us:.1f} µs of collector CPU per point**.",
            "",
        ]
    lines += [ingest_note, ""]
    lines.append(
        "The 4-record envelope costs and the Python-simulator figures of the run before this"
        " one (`benchmarks/simulate.py` as generator, 2-3x the collector's CPU) are in this"
        " file's history; the collector's CPU per envelope by component is in"
        " [`envelope-cpu.md`](envelope-cpu.md)."
    )
    lines += [
        "",
        "Benchmarks are not timed tests: the machine is shared and noisy; compare figures from"
        " one run.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.md").write_text(text)
    (RESULTS / "load.json").write_text(
        json.dumps(
            {k: {**asdict(m), "rate": m.rate, "held": m.held} for k, m in runs.items()},
            indent=2,
        )
        + "\n"
    )
    return text


def previous_runs(path: Path) -> dict[str, Measured]:
    """The runs of an earlier invocation (its load.json), to report with this one's."""
    names = {f.name for f in fields(Measured)}
    out = {}
    for key, d in json.loads(path.read_text()).items():
        m = Measured(**{k: v for k, v in d.items() if k in names})
        m.load_before, m.load_after = tuple(m.load_before), tuple(m.load_after)  # type: ignore[assignment]
        out[f"fleet-{m.stations}" if key == "fleet" else key] = m
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleets", default="100000", help="fleet sizes (stations), comma-separated")
    ap.add_argument("--minutes", type=int, default=5)
    ap.add_argument("--collectors", type=int, default=2)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--sat-connections", type=int, default=128)
    ap.add_argument("--sat-seconds", type=float, default=40)
    ap.add_argument("--sat-rate", type=float, default=3000)
    ap.add_argument("--skip", default="", help="comma-separated: sat,batch")
    ap.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before each fleet's measured window every station sends one envelope, as fast"
        " as the stack takes it, not counted (default: on; --no-warmup measures from an"
        " empty database, first uploads included)",
    )
    ap.add_argument(
        "--warmup-connections", type=int, default=128, help="wrk connections for the warm-up"
    )
    ap.add_argument(
        "--influx",
        choices=("deploy", "stock"),
        default="deploy",
        help="InfluxDB's settings: deploy/influxdb's tuning (default) or influxd's defaults",
    )
    ap.add_argument("--append", action="store_true", help="report the runs of load.json too")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite load.md from load.json, run nothing"
    )
    ap.add_argument("--registry-s", type=float, default=0.0, help="with --report-only")
    ap.add_argument(
        "--command", action="append", default=[], help="with --report-only: the runs' commands"
    )
    ap.add_argument(
        "--note", action="append", default=[], help="a paragraph to add (a cited run), repeatable"
    )
    args = ap.parse_args()
    skip = set(args.skip.split(",")) - {""}
    sizes = [int(n) for n in args.fleets.split(",") if n]
    runs: dict[str, Measured] = (
        previous_runs(RESULTS / "load.json") if args.append or args.report_only else {}
    )
    if not args.report_only:
        args.command = [" ".join(sys.argv[1:])]
    if args.report_only:
        args.registry = max(m.stations for m in runs.values())
        print(write_results(runs, args, args.registry_s, "\n\n".join(args.note)))
        return
    sat_count = int(args.sat_rate * args.sat_seconds) if "sat" not in skip else 0
    options, env = deploy_influx_tuning() if args.influx == "deploy" else ({}, {})
    with (
        tempfile.TemporaryDirectory() as tmp_s,
        influxd("/usr/bin/influxd", data_options=options, env=env) as db,
    ):
        tmp = Path(tmp_s)
        suffix = "" if args.influx == "deploy" else "-stock"

        def run(name: str, *params: Any, **kw: Any) -> None:
            """measure() one run, named for the InfluxDB settings, kept and printed."""
            m = measure(name + suffix, *params, **kw)
            m.influx = args.influx
            m.influx_settings = settings_text(options, env)
            runs[m.name] = m
            print(row(m), flush=True)

        tokens, setup_s = setup_registry(tmp, db.url, max([*sizes, sat_count, 2000]))
        args.registry = len(tokens)
        print(f"registry: {len(tokens):,} stations and tokens in {setup_s:.0f} s", flush=True)
        for n in sizes:
            run(
                f"fleet-{n}", tmp, db, tokens[:n], args.collectors,
                {"rate": n / 60.0, "rounds": args.minutes},
                args.connections, None, lead_s=20,
                warmup_connections=args.warmup_connections if args.warmup else 0,
            )  # fmt: skip
        if "sat" not in skip:
            for n_coll in (1, 2):
                # every run has its own database: each station's first envelope
                run(
                    f"sat-{n_coll}", tmp, db, tokens[:sat_count], n_coll,
                    {"rate": args.sat_rate, "rounds": 1},
                    args.sat_connections, args.sat_seconds, lead_s=5,
                )  # fmt: skip
        if "batch" not in skip:
            # 150 envelopes/s planned (15,000 records/s), more than one process answers;
            # a station's later rounds are cheap to build (its first is simulated)
            count = min(len(tokens), int(50 * args.sat_seconds))
            run(
                "batch-100", tmp, db, tokens[:count], 1,
                {"rate": 150.0, "rounds": 3, "targets": 99},
                args.sat_connections, args.sat_seconds, lead_s=5,
            )  # fmt: skip
    print(write_results(runs, args, setup_s, "\n\n".join(args.note)))


if __name__ == "__main__":
    main()
