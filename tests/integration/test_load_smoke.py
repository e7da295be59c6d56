"""The fleet benchmark's machinery, briefly (benchmarks/load.py, benchmarks/wrkload.py): wrk
replaying pre-built envelopes of 200 stations (each its own token, from the registry's bulk
path) for about 10 s through nginx (station routing, `hash ... consistent`) to two collector
processes and a real InfluxDB 1.6.7. Correctness only, never timing: every envelope answered
200, every record acknowledged (the Lua script counts the answers' ids) and stored once in
InfluxDB, both collector processes served stations, and each station went to one of them.
The warm-up (every station's one envelope first) is complete and counted apart: the measured
window's stored records are exactly its own."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from benchmarks.influx_snapshot import measure as measure_snapshot
from benchmarks.influx_snapshot import station_lines
from benchmarks.load import measure, setup_registry
from tests.conftest import require_tool
from tests.harness.dbs import InfluxServer, deploy_influx_tuning

STATIONS = 200
ROUNDS = 2
RATE = 40.0  # envelopes/s: 200 stations x 2 rounds in 10 s


def accepted_by(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(r"^sinyal_records_accepted_total ([0-9.e+]+)$", text, re.M)
    assert m, "sinyal_records_accepted_total not in /metrics"
    return int(float(m.group(1)))


@pytest.mark.slow
def test_wrk_through_nginx_to_two_collectors(influxdb: InfluxServer, tmp_path: Path) -> None:
    for tool in ("wrk", "nginx", "influxd"):
        require_tool(tool)
    tokens, _ = setup_registry(tmp_path, influxdb.url, STATIONS)
    per_process: list[int] = []

    def count(procs: list[tuple[int, str]]) -> None:
        per_process.extend(accepted_by(url) for _, url in procs)

    m = measure(
        "smoke",
        tmp_path,
        influxdb,
        tokens,
        2,
        {"rate": RATE, "rounds": ROUNDS},
        connections=20,
        deadline_s=60,
        lead_s=3,
        before_stop=count,
        warmup_connections=20,
    )
    assert m.envelopes == STATIONS * ROUNDS and m.records == 4 * m.envelopes
    w = m.wrk
    assert m.finished, w
    assert (w["ok"], w["other"], w["rejected_envelopes"]) == (m.envelopes, 0, 0), w
    assert w["accepted"] == m.records, w
    assert sum(w["errors"].values()) == 0, w
    assert m.stored == m.records
    warm = m.warmup
    assert warm is not None and m.warmup_ok, warm
    assert (warm["envelopes"], warm["records"], warm["stored"]) == (
        STATIONS,
        4 * STATIONS,
        4 * STATIONS,
    ), warm
    # Both processes served (the hash spreads 200 stations), and a station's two rounds went
    # to the same process: a process's accepted count is a whole number of stations' rounds.
    assert sum(per_process) == m.records + warm["records"], per_process
    assert all(n > 0 for n in per_process), per_process
    assert all(n % (4 * (ROUNDS + 1)) == 0 for n in per_process), per_process
    # InfluxDB's engine over the window, from its /debug/vars: counters that only grow
    engine = m.influx_window
    counters = {"snapshots", "snapshot_s", "compactions", "compaction_s", "gc", "gc_pause_s"}
    sampled = {f"{k}_{x}" for k in ("snapshot", "other") for x in ("s_sampled", "waits", "slow")}
    assert set(engine) == counters | sampled | {"missed"}, engine
    # sampled once a second over a window of about 10 s; every wait is in one of the two
    assert engine["snapshot_s_sampled"] + engine["other_s_sampled"] >= 5, engine
    assert engine["snapshot_waits"] + engine["other_waits"] > 0, engine
    assert engine["snapshot_slow"] <= engine["snapshot_waits"], engine
    assert all(v >= 0 for v in engine.values()), engine
    assert all(float(engine[k]).is_integer() for k in ("snapshots", "compactions", "gc"))


@pytest.mark.slow
def test_influx_snapshot_benchmark_measures_a_snapshot() -> None:
    """benchmarks/influx_snapshot.py on a small fleet: the rounds are written, then the
    snapshot InfluxDB makes on its own is timed and its keys counted."""
    require_tool("influxd")
    rounds = station_lines(STATIONS, ROUNDS, 3)
    assert [len(r) for r in rounds] == [4 * STATIONS] * ROUNDS
    options, _ = deploy_influx_tuning()
    options = {**options, "cache-snapshot-write-cold-duration": "1s"}
    r = measure_snapshot("200", rounds, options)
    assert len(r.write_us_per_point) == ROUNDS and all(x >= 0 for x in r.write_us_per_point)
    # every series' fields: 3 icmp series and the heartbeat's per station, 12+ fields each
    assert r.keys >= STATIONS * 4 * 12, r
    assert r.snapshot_s > 0 and r.snapshot_cpu_s >= 0, r
