"""Report benchmark: national and one-province reports over fleets of 1,000 / 3,000 / 10,000
stations with one day of 5-minute rounds in InfluxDB 1.6.7.

Starts a real influxd (Debian's 1.6.7, loopback, temp dir), registers N stations (the report
test's fleet layout: three provinces in WIB/WITA/WIT, three operators) and writes one day of
rounds straight to /write with collector.lineproto's encoder (the collector's own path is
benchmarked in ingest.py): per station 288 icmp, 96 dns, 96 http, 48 upload and 8 throughput
points. Each report runs in a fresh child process (`--child`) so its wall time per phase and
its peak RSS (ru_maxrss) are its own; influxd's CPU time during the report and its peak RSS
(VmHWM) are read from /proc.

    .venv/bin/python benchmarks/report.py [--fleets 1000,3000,10000] [--data DIR]
Writes benchmarks/results/report.md (and report.json). With --data, influxd keeps its data in
DIR and each fleet's database is seeded once (DIR/seeded-N.json records its day), so a rerun
measures the reports without seeding again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, machine

from collector.lineproto import encode_point
from collector.registry import Registry
from tests.harness.dbs import InfluxServer, _stop, _wait_http, influxd, influxd_config
from tests.harness.report_fleet import FleetStation, fleet, write_registry_csv
from tests.harness.servers import LOOPBACK, free_port

ROUND_S = 300
KEEP_MARK = "## Growth and extrapolation"  # written by hand from the figures; kept on reruns
FORMATS = "csv,xlsx,pdf,html"


def station_lines(s: FleetStation, day0: datetime, rnd: random.Random) -> list[str]:
    tags = {"station": s.id, "uplink": "modem0", "operator": s.operator,
            "province": s.province, "regency": s.regency}  # fmt: skip
    base = int(day0.timestamp()) * 1_000_000_000
    out = []
    for k in range(86400 // ROUND_S):
        t = base + k * ROUND_S * 1_000_000_000
        rtt = 20 + rnd.random() * 120 + (300 if rnd.random() < 0.02 else 0)
        lost = 10 if rnd.random() < 0.005 else (1 if rnd.random() < 0.05 else 0)
        f: dict[str, Any] = {"sent": 10, "received": 10 - lost, "loss_pct": 10.0 * lost, "ok": 1}
        if lost < 10:
            f.update(
                rtt_p50_ms=round(rtt, 3),
                rtt_avg_ms=round(rtt, 3),
                jitter_ms=round(rnd.random() * 30, 3),
                mos=round(3 + rnd.random() * 1.4, 2),
            )
        else:
            f["ok"] = 0
        out.append(encode_point("icmp", {**tags, "target": "kpu"}, f, t))
        if k % 3 == 0:
            ok = int(rnd.random() > 0.01)
            out.append(encode_point("dns", {**tags, "resolver": "op", "qname": "kpu.go.id",
                                    "qtype": "A"}, {"resolve_ms": round(rnd.random() * 200, 3),
                                    "rcode": 0, "ok": ok}, t + 20_000_000_000))  # fmt: skip
            out.append(encode_point("http", {**tags, "target": "kpu-web"},
                                    {"ttfb_ms": round(100 + rnd.random() * 900, 3),
                                     "total_ms": round(500 + rnd.random() * 3000, 3), "ok": ok},
                                    t + 30_000_000_000))  # fmt: skip
        if k % 6 == 0:
            ok = int(rnd.random() > 0.05)
            out.append(encode_point("upload", {**tags, "target": "collector"},
                                    {"duration_s": round(1 + rnd.random() * 30, 3), "ok": ok},
                                    t + 40_000_000_000))  # fmt: skip
        if k % 36 == 0:
            out.append(encode_point("throughput", {**tags, "backend": "mini", "server": "c"},
                                    {"download_mbps": round(rnd.random() * 40, 3),
                                     "upload_mbps": round(rnd.random() * 12, 3), "ok": 1},
                                    t + 50_000_000_000))  # fmt: skip
    return out


def seed(url: str, db: str, stations: list[FleetStation], day0: datetime) -> tuple[int, float]:
    httpx.post(f"{url}/query", data={"q": f'CREATE DATABASE "{db}"'}, timeout=30)
    rnd = random.Random(1)
    n = 0
    t0 = time.perf_counter()
    batch: list[str] = []
    with httpx.Client(timeout=120) as c:
        for s in stations:
            batch += station_lines(s, day0, rnd)
            if len(batch) >= 20_000:
                r = c.post(f"{url}/write", params={"db": db}, content="\n".join(batch))
                assert r.status_code == 204, r.text
                n += len(batch)
                batch = []
        if batch:
            r = c.post(f"{url}/write", params={"db": db}, content="\n".join(batch))
            assert r.status_code == 204, r.text
            n += len(batch)
    return n, time.perf_counter() - t0


def proc_cpu_s(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def kept_influxd(data: Path) -> Iterator[InfluxServer]:
    """influxd 1.6.7 on loopback with its data in `data` (kept after the run)."""
    data.mkdir(parents=True, exist_ok=True)
    http_port, rpc_port = free_port(), free_port()
    conf = data / "influxdb.conf"
    conf.write_text(influxd_config(data, http_port, rpc_port, False))
    log_path = data / "influxd.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["/usr/bin/influxd", "run", "-config", str(conf)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://{LOOPBACK}:{http_port}"
    try:
        if not _wait_http(f"{url}/ping", proc, 204, 120.0):
            raise RuntimeError(f"influxd did not answer on {url}: see {log_path}")
        yield InfluxServer(url, proc, log_path)
    finally:
        _stop(proc)


def run_child(cfg: Path, out: Path, args: list[str], influx_pid: int) -> dict[str, Any]:
    cpu0 = proc_cpu_s(influx_pid)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(cfg), str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"report child failed: {stderr[-3000:]}")
    res: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    res["influx_cpu_s"] = proc_cpu_s(influx_pid) - cpu0
    res["load"] = [load0, os.getloadavg()[0]]  # 1-minute load average before and after
    return res


def _children_hwm(stop: threading.Event, peak: dict[int, float]) -> None:
    """Each child process's peak RSS (VmHWM, its own after exec: ru_maxrss of children
    counts the parent's pages at fork), sampled every 50 ms until `stop`."""
    me = str(os.getpid())
    while not stop.wait(0.05):
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[1] != me:
                    continue
                peak[int(d.name)] = proc_hwm_mb(int(d.name))
            except (OSError, IndexError):
                continue


def child(cfg_path: str, out: str, args: list[str]) -> None:
    """One report in this process: phase timings and peak RSS as one JSON line."""
    t0 = time.perf_counter()
    stop = threading.Event()
    peak: dict[int, float] = {}
    watcher = threading.Thread(target=_children_hwm, args=(stop, peak), daemon=True)
    watcher.start()
    from agent.contract.thresholds import load as load_thresholds
    from collector import config
    from collector.report.api import ReportRequest, make_report
    from collector.report.i18n import Lang
    from collector.report.render import write_all

    cfg = config.load(cfg_path, environ={})
    p = argparse.ArgumentParser()
    p.add_argument("--province")
    p.add_argument("--day", required=True)
    a = p.parse_args(args)
    day = a.day
    req = ReportRequest(day, day, province=a.province, formats=tuple(FORMATS.split(",")),
                        interval_s=ROUND_S)  # fmt: skip
    with Registry(cfg.registry_path) as reg:
        stations = reg.stations()
    th = load_thresholds(cfg.thresholds_file)
    t1 = time.perf_counter()
    report = make_report(cfg.sink, req, stations, th)
    t2 = time.perf_counter()
    marks: dict[str, float] = {}
    last = [t2]

    def step(name: str) -> None:
        now = time.perf_counter()
        marks[name] = now - last[0]
        last[0] = now

    write_all(report, Lang("id"), req.formats, Path(out), step)
    t3 = time.perf_counter()
    rows = report.table("stations")
    stop.set()
    watcher.join()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "import_s": t1 - t0, "query_s": t2 - t1, "files_s": t3 - t2, "total_s": t3 - t0,
        "phases": marks, "queries": len(report.queries),
        "station_rows": len(rows.rows) if rows else 0,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # The PDF is laid out in a child process (collector.report.render.PdfProcess).
        "child_maxrss_mb": max(peak.values(), default=0.0),
        "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime
        + resource.getrusage(resource.RUSAGE_SELF).ru_stime + kids.ru_utime + kids.ru_stime,
        "child_cpu_s": kids.ru_utime + kids.ru_stime,
        "bytes": {f.name: f.stat().st_size for f in Path(out).iterdir()},
    }))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fleets", default="1000,3000,10000")
    ap.add_argument("--data", type=Path, help="keep influxd's data here and seed each fleet once")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"))
    args, rest = ap.parse_known_args()
    if args.child:
        child(args.child[0], args.child[1], rest)
        return 0
    sizes = [int(x) for x in args.fleets.split(",")]
    day0 = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0,
                                                           microsecond=0)  # fmt: skip
    # The national report reads each station's own local day: seed a UTC day and a margin.
    results = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.data is not None:
            db = stack.enter_context(kept_influxd(args.data.resolve()))
        else:
            db = stack.enter_context(influxd("/usr/bin/influxd"))
        for n in sizes:
            stations = fleet(n)
            assert len({s.id for s in stations}) == n
            work = tmp / f"f{n}"
            (work / "data").mkdir(parents=True)
            reg = Registry(work / "data" / "registry.sqlite3")
            reg.import_stations_csv(write_registry_csv(stations, work / "stations.csv"))
            reg.close()
            dbname = f"bench{n}"
            mark = args.data / f"seeded-{n}.json" if args.data is not None else None
            if mark is not None and mark.exists():
                done = json.loads(mark.read_text())
                points, wsecs, fday0 = done["points"], done["seed_s"], done["day0"]
            else:
                points, wsecs, fday0 = 0, 0.0, day0.isoformat()
                for d in (day0 - timedelta(hours=12), day0 + timedelta(hours=12)):
                    p_, s_ = seed(db.url, dbname, stations, d)
                    points += p_
                    wsecs += s_
                if mark is not None:
                    mark.write_text(json.dumps({"points": points, "seed_s": wsecs, "day0": fday0}))
            day = ["--day", datetime.fromisoformat(fday0).date().isoformat()]
            cfg = work / "collector.yaml"
            cfg.write_text(yaml.safe_dump({
                "sink": {"kind": "v1", "url": db.url, "database": dbname, "timeout_s": 600},
                "data_dir": str(work / "data"),
                "thresholds_file": str(Path(__file__).resolve().parent.parent / "config"
                                       / "thresholds.yaml"),
            }))  # fmt: skip
            nat = run_child(cfg, work / "national", day, db.process.pid)
            prov = run_child(cfg, work / "province", ["--province", "Papua", *day], db.process.pid)
            res = {"stations": n, "points": points, "seed_s": wsecs, "national": nat,
                   "province": prov, "influx_hwm_mb": proc_hwm_mb(db.process.pid)}  # fmt: skip
            results.append(res)
            print(json.dumps(res), flush=True)
            if args.data is None:
                httpx.post(f"{db.url}/query", data={"q": f'DROP DATABASE "{dbname}"'}, timeout=120)
    (RESULTS / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    write_md(results)
    return 0


def write_md(results: list[dict[str, Any]]) -> None:
    lines = [
        "# Report benchmark",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; the 2 cores were",
        "shared with other engineers' work during the run, so times are upper bounds.",
        "InfluxDB 1.6.7 (Debian, inmem index) on loopback. Fleet: the report test's layout",
        "(3 provinces in WIB/WITA/WIT, 3 operators), 36 hours of rounds every 5 minutes seeded",
        "so each station's own local day is complete; the report covers one local day, national",
        "(per station zone: 3 windows, read as one 26-hour stretch) and one province (Papua: a",
        "third of the stations, one of them on WITA, so two windows, one 25-hour stretch).",
        "All formats: CSV, XLSX, PDF, HTML (the printed ones list",
        "the worst 100 stations). Each report runs in a fresh process: `peak RSS` is its",
        "ru_maxrss + the peak of the child process that lays out the PDF (running beside the",
        "other formats), `report CPU` the user+system time of both (the child's in brackets);",
        "influxd CPU is influxd's user+system time during the report; the load average",
        "(1 minute) shows how busy the 2 cores were. `files` are the main process's steps: the",
        "PDF step is the wait for the child after CSV and XLSX.",
        "",
        "| stations | points stored | report | wall | query | files (csv / xlsx / charts / "
        "html / pdf) | peak RSS (report + PDF) | report CPU (PDF) | influxd CPU | "
        "load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name in ("national", "province"):
            x = r[name]
            ph = x["phases"]
            files = " / ".join(f"{ph.get(k, 0):.1f}" for k in ("csv", "xlsx", "charts", "html",
                                                                "pdf"))  # fmt: skip
            lines.append(
                f"| {r['stations']:,} | {r['points']:,} | {name} | {x['wall_s']:.1f} s | "
                f"{x['query_s']:.1f} s | {files} s | {x['maxrss_mb']:.0f} + "
                f"{x.get('child_maxrss_mb', 0):.0f} MB | {x.get('cpu_s', 0):.1f} s "
                f"({x.get('child_cpu_s', 0):.1f} s) | {x['influx_cpu_s']:.1f} s | "
                f"{x.get('load', [0, 0])[0]:.1f} / {x.get('load', [0, 0])[1]:.1f} |"
            )
    lines += ["", "influxd peak RSS (whole run so far, including the writes): " + ", ".join(
        f"{r['stations']:,} stations {r['influx_hwm_mb']:.0f} MB" for r in results)]  # fmt: skip
    md = RESULTS / "report.md"
    keep = ""
    if md.exists() and KEEP_MARK in md.read_text():
        keep = KEEP_MARK + md.read_text().split(KEEP_MARK, 1)[1]
    md.write_text("\n".join(lines) + "\n" + ("\n" + keep if keep else ""))


if __name__ == "__main__":
    sys.exit(main())
