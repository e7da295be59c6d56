"""Series cardinality from one token (issue 15, finding 3): what N hostile targets from one
station token cost InfluxDB, with the collector's per-station series cap and without it.

For each mode a fresh InfluxDB 1.6.7 (loopback, its own data dir) and a real collector
(`sinyal-collector serve`): one station token posts N icmp records, each with a new `target`
value, in gzip envelopes of `--batch`. Measured after the writes and a WAL flush wait: series
in the database (SHOW SERIES CARDINALITY), the database's data + WAL bytes on disk, the size
of its TSM files, InfluxDB's RSS, and what the collector acknowledged and refused. "uncapped"
sets limits.max_series_per_station to 1,000,000; "capped" uses the default (500).

    python benchmarks/series_cap.py [--targets 20000] [--batch 500]

Writes benchmarks/results/hardening-series.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, RESULTS, machine, proc_sample

# Run as a script (python benchmarks/X.py): the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.contract.record import format_time
from collector.config import Limits
from collector.registry import Registry
from tests.harness.dbs import InfluxServer, free_port, influxd

ROOT = Path(__file__).resolve().parent.parent
STATION = "3171011001001"
DATABASE = "bench"
HEADER = (
    "| mode | limits.max_series_per_station | acknowledged | refused (series_limit) "
    "| series in the database | disk (data + WAL) | TSM | InfluxDB RSS | time |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Result:
    mode: str
    cap: int
    accepted: int
    refused: int
    series: int
    disk_before_mb: float
    disk_mb: float
    tsm_mb: float
    rss_before_mb: float
    influx_rss_mb: float
    seconds: float


def record(target: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "kind": "icmp",
        "measured_at": format_time(datetime.now(UTC)),
        "tags": {"station": STATION, "uplink": "modem0", "operator": "telkomsel", "target": target},
        "fields": {"sent": 10, "received": 10, "loss_pct": 0.0, "rtt_p50_ms": 20.0, "ok": 1},
        "error": None,
    }


def body(records: list[dict[str, Any]]) -> bytes:
    doc = {
        "schema": 1,
        "agent": {"station": STATION, "version": "bench", "boot_id": None},
        "sent_at": format_time(datetime.now(UTC)),
        "records": records,
    }
    return gzip.compress(json.dumps(doc).encode(), 1)


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def disk(influx_dir: Path) -> float:
    return dir_mb(influx_dir / "data" / DATABASE) + dir_mb(influx_dir / "wal" / DATABASE)


def tsm_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*.tsm")) / 2**20


def cardinality(db: InfluxServer) -> int:
    doc = db.query_raw("SHOW SERIES CARDINALITY", DATABASE)
    series = doc["results"][0].get("series", [])
    return int(series[0]["values"][0][0]) if series else 0


def run(mode: str, cap: int, targets: int, batch: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp_s, influxd("/usr/bin/influxd") as db:
        tmp = Path(tmp_s)
        db.create_database(DATABASE)
        (tmp / "collector").mkdir()
        reg = Registry(tmp / "collector" / "registry.sqlite3")
        reg.import_stations_csv(ROOT / "config" / "stations.example.csv")
        _, token = reg.add_token(station=STATION, note="bench")
        reg.close()
        port = free_port()
        cfg = {
            "listen": {"host": "127.0.0.1", "port": port},
            "sink": {"kind": "v1", "url": db.url, "database": DATABASE, "timeout_s": 60},
            "data_dir": str(tmp / "collector"),
            "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
            "status": {"sweeper": False},
            "limits": {"max_series_per_station": cap},
        }
        (tmp / "collector.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen(
            [str(BIN / "sinyal-collector"), "serve", "-c", str(tmp / "collector.yaml")]
        )
        influx_dir = db.log_path.parent
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
            }
            accepted = refused = 0
            disk_before = disk(influx_dir)
            rss_before = proc_sample(db.process.pid)[1]
            t0 = time.monotonic()
            with httpx.Client(timeout=120) as client:
                for start in range(0, targets, batch):
                    recs = [record(f"t{i}") for i in range(start, min(targets, start + batch))]
                    r = client.post(f"{url}/api/v1/measurements", content=body(recs),
                                    headers=headers)  # fmt: skip
                    r.raise_for_status()
                    answer = r.json()
                    accepted += len(answer["accepted"])
                    refused += len(answer["rejected"])
            seconds = time.monotonic() - t0
            time.sleep(2)  # let the WAL settle
            return Result(
                mode,
                cap,
                accepted,
                refused,
                cardinality(db),
                disk_before,
                disk(influx_dir),
                tsm_mb(influx_dir / "data" / DATABASE),
                rss_before,
                proc_sample(db.process.pid)[1],
                seconds,
            )
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    default_cap = Limits().max_series_per_station
    results = [
        run("uncapped", 1_000_000, args.targets, args.batch),
        run("capped (default)", default_cap, args.targets, args.batch),
    ]
    rows = [
        f"| {r.mode} | {r.cap:,} | {r.accepted:,} | {r.refused:,} | {r.series:,} | "
        f"{r.disk_before_mb:.1f} -> {r.disk_mb:.1f} MB | {r.tsm_mb:.1f} MB | "
        f"{r.rss_before_mb:.0f} -> {r.influx_rss_mb:.0f} MB | {r.seconds:.1f} s |"
        for r in results
    ]
    text = f"""# Series cap per station (issue 15, finding 3)

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}. `python benchmarks/series_cap.py
--targets {args.targets} --batch {args.batch}`: for each mode a fresh InfluxDB 1.6.7 on
loopback and `sinyal-collector serve`; one station token posts {args.targets:,} icmp records,
each with a new `target` value (a new series), in gzip envelopes of {args.batch}. After the
writes (and 2 s): series in the database, its data + WAL directory size (before -> after), the
TSM files within it, and InfluxDB's RSS before -> after (its in-memory index, Debian's default
`inmem`, grows with every series; the WAL holds the points until a snapshot).

{HEADER}
{chr(10).join(rows)}

- The disk column is mostly the write-ahead log (segments of up to 10 MB, written before the
  points are snapshot to TSM): it moves little for the capped run, which wrote 500 points; the
  lasting costs of the uncapped one are its series index (RSS) and TSM files.
- With the cap, what one token can add to the database's index is bounded by the cap (plus
  the station's status series), whatever it sends; every refused record carries
  `series_limit` with the station and the limit in its detail, so the operator sees it in
  `sinyal_records_rejected_total{{reason="series_limit"}}`.
- The cap lives in the collector process: a restart lets a station open up to the cap again
  (docs/security.md, "Agent and data"). InfluxDB's own `max-series-per-database` stays the
  last line; when it is reached the collector answers 503 (agents retry), never a per-record
  refusal.
"""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hardening-series.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
